"""The CKKS key holder: owns the only secret key and decrypts aggregates, never an individual contribution.

Trust model. The aggregator and the key holder are separate parties that must not collude: the aggregator sees
every client's ciphertext but no key; the key holder has the key but only ever sees sums. Both are honest-but-
curious (they follow the protocol and try to learn from what they see). In a deployment the key holder accepts
aggregates only over a channel authenticated as the aggregator (mutual TLS); ``receive`` takes that authenticated
identity as ``sender`` and refuses anyone else.

Invariants enforced here, through the only entry point :meth:`KeyHolder.receive`:

* only a :class:`~secagg.ckks.messages.CKKSAggregate` is ever decrypted; there is no method that takes a single
  contribution, and a contribution sent here is refused;
* an aggregate must name at least ``min_contributors`` (>= 2) distinct clients (``TooFewContributorsError``);
* at most one aggregate is decrypted per ``round_id`` (``DuplicateMessageError``), so the aggregator cannot obtain
  the sums of two overlapping subsets of one round and difference them;
* ciphertexts must be made under this key holder's public context, at the fresh level and at the scale of their
  kind (Δ for pre-weighted sums, Δ^2 for aggregator-weighted ones), in the chunk layout their ``dim`` implies;
  otherwise nothing is decrypted and nothing changes.

Limits: the key holder cannot verify that a ciphertext really is the sum over the contributors it names. An
actively malicious aggregator could forward one client's ciphertext labelled as a sum; defending against that
needs authenticated, verifiable contributions and is outside this scheme's semi-honest model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tenseal as ts

from secagg.ckks.messages import CKKSAggregate, CKKSResult
from secagg.ckks.params import CKKSParams, chunk_lengths, load_chunk, resolve
from secagg.errors import DecryptionError, MalformedMessageError
from secagg.he_round import HEKeyHolder, fresh_level

__all__ = ["KeyHolder"]


class KeyHolder(HEKeyHolder):
    """Generates a CKKS key pair for ``params`` and decrypts aggregates of at least ``min_contributors`` clients."""

    aggregate_type = CKKSAggregate

    def __init__(self, params: str | CKKSParams = "default", *, min_contributors: int = 2) -> None:
        self.params = resolve(params)
        self._init_keyholder(min_contributors)
        p = self.params
        self._context = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree,
                                   coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
        self._context.global_scale = p.scale
        self._public = self._context.serialize(save_public_key=True, save_secret_key=False,
                                               save_galois_keys=False, save_relin_keys=False)
        self.context_id = hashlib.sha256(self._public).digest()
        self._fresh = fresh_level(self._context)

    def _check_session(self, msg: CKKSAggregate) -> None:
        if msg.context_id != self.context_id:
            raise DecryptionError("aggregate was encrypted under a different public context (another key holder)")

    def _decrypt(self, msg: CKKSAggregate) -> CKKSResult:
        lengths = chunk_lengths(msg.dim + int(msg.weight_lane), self.params.slots)
        if len(msg.chunks) != len(lengths):
            raise MalformedMessageError(f"aggregate has {len(msg.chunks)} chunks, dim {msg.dim} needs {len(lengths)}")
        # a pre-weighted sum (weight lane) is at scale Δ; a sum weighted by the aggregator at the product scale Δ^2
        if not (msg.weight_lane or self.params.supports_multiply):
            raise MalformedMessageError(f"parameter set {self.params.name!r} has no aggregator-weighted sums")
        scale = self.params.scale if msg.weight_lane else self.params.product_scale
        vecs = [load_chunk(self._context, c, length=n, level=self._fresh, scale=scale)
                for c, n in zip(msg.chunks, lengths)]
        try:
            values = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vecs])
        except Exception as exc:  # SEAL refuses ciphertexts it cannot decrypt
            raise DecryptionError(f"aggregate does not decrypt: {exc}") from exc
        if values.shape[0] != sum(lengths) or not np.isfinite(values).all():
            raise DecryptionError("aggregate decrypted to a vector of the wrong size or with non-finite values")
        return CKKSResult(round_id=msg.round_id, contributors=msg.contributors, values=values)
