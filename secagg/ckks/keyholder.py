"""The CKKS key holder: owns the only secret key and releases verified sums, never an individual contribution.

Trust model. The aggregator and the key holder are separate parties that must not collude: the aggregator sees
every client's (padded) ciphertext but no key; the key holder has the key and every client's pad seed but only
ever sees aggregates. The aggregator may deviate arbitrarily: it may name any contributors, relabel rounds, drop,
scale, replay or forge ciphertexts. The key holder follows the protocol. ``receive`` takes the authenticated
sender (mutual TLS in a deployment).

Invariants enforced here, through the only entry point :meth:`KeyHolder.receive`
(:class:`secagg.he_keyholder.HEKeyHolder`):

* only a :class:`~secagg.ckks.messages.CKKSAggregate` is ever decrypted, only if its tags are the sum of its
  named contributors' sealed tags (a term the aggregator added itself is refused; pass probability below
  ``2^-128``, :func:`secagg.he_tags.soundness_bits`), and only after the pads of exactly its named contributors (seeds sealed to this key holder for this round) are removed; a result is released only if
  every guard slot decrypts to ``|g| <= GUARD_TOLERANCE`` and every value stays within ``fresh_value_bound``, so an
  aggregate that is not the exact sum of the named contributions of this round under this key is refused
  (``VerificationError``): soundness error below ``2^-128`` (:attr:`CKKSParams.guard_soundness_bits`);
* an aggregate names at least ``min_contributors`` (>= 2) distinct clients (``TooFewContributorsError``);
* at most one aggregate is processed per ``round_id``, and that round's seeds are then gone, so no contribution
  is ever part of two released sums;
* ``dim`` is bounded by ``max_dim`` and the chunk count checked arithmetically before anything is allocated.

Limit: ciphertexts carry no proof that they are well formed, so a malicious client (or the aggregator with a
colluding client, which knows the tag key) can add any value to the sum (up to the range check) and could probe the key through many rounds' results; rotate the key holder's key per
deployment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secagg.ckks.messages import CKKSAggregate, CKKSResult
from secagg.ckks.params import GUARD_SLOTS, GUARD_TOLERANCE, CKKSParams, chunk_count, resolve
from secagg.errors import DecryptionError
from secagg.hazmat import rlwe
from secagg.he_keyholder import HEKeyHolder, AggregateStream
from secagg.he_round import DEFAULT_MAX_DIM, bundle, ring_of

__all__ = ["KeyHolder"]


class KeyHolder(HEKeyHolder):
    """Generates a CKKS key pair for ``params`` and releases verified sums of at least ``min_contributors``
    clients. With ``peer_identities`` every pad seed must carry its client's Ed25519 signature (seeds may then be
    relayed by the aggregator); without, a seed must arrive from its client (``sender``) directly."""

    aggregate_type = CKKSAggregate

    def __init__(self, params: str | CKKSParams = "default", *, min_contributors: int = 2,
                 max_dim: int = DEFAULT_MAX_DIM,
                 peer_identities: Mapping[int, Ed25519PublicKey] | None = None) -> None:
        self.params = resolve(params)
        self._init_keyholder(min_contributors, None, max_dim, peer_identities)
        p = self.params
        self._context = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree,
                                   coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
        self._context.global_scale = p.scale
        self._public = bundle(self._context.serialize(save_public_key=True, save_secret_key=False,
                                                      save_galois_keys=False, save_relin_keys=False), self.seal_key,
                              self.release_key)
        self.context_id = self.session_id = hashlib.sha256(self._public).digest()
        self._layout, self._parms_id = ring_of(self._context, ntt=True)

    def _chunk_count(self, dim: int) -> int:
        return chunk_count(dim + 1 + GUARD_SLOTS, self.params.slots)

    def _buffer(self, dim: int) -> np.ndarray:
        return np.empty(dim + 1 + GUARD_SLOTS, dtype=np.float64)

    def _decrypt_part(self, stream: AggregateStream, first: int, residues: np.ndarray) -> None:
        slots, total = self.params.slots, stream.plain.shape[0]
        for k, res in enumerate(residues, start=first):
            lo, hi = k * slots, min(total, (k + 1) * slots)
            raw = rlwe.to_tenseal(res, self._layout, parms_id=self._parms_id, scale=self.params.scale, length=hi - lo)
            try:
                stream.plain[lo:hi] = ts.ckks_vector_from(self._context, raw).decrypt()
            except Exception as exc:  # SEAL refuses ciphertexts it cannot decrypt
                raise DecryptionError(f"aggregate does not decrypt: {exc}") from exc

    def _finish(self, msg: CKKSAggregate, stream: AggregateStream) -> CKKSResult:
        values = stream.plain
        guards = values[-GUARD_SLOTS:]
        if not np.all(np.abs(guards) <= GUARD_TOLERANCE):
            raise self._guard_error(f"guard slots decrypt to {np.max(np.abs(guards)):.3g}")
        block = 1 << 20  # |values| checked block by block: no temporary of the whole aggregate
        if not all(np.max(np.abs(values[i:i + block])) <= self.params.fresh_value_bound
                   for i in range(0, values.shape[0], block)):
            raise self._guard_error("a decrypted value exceeds the parameter set's range")
        return CKKSResult(round_id=msg.round_id, contributors=msg.contributors, values=values[:msg.dim + 1],
                          terms=b"", signature=b"")
