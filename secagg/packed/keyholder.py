"""The packed-BFV key holder: owns the only secret key and decrypts aggregates, never a single contribution.

Same trust model as :mod:`secagg.ckks.keyholder` (aggregator and key holder are separate, non-colluding,
honest-but-curious parties; ``receive`` takes the authenticated sender). Invariants enforced by the only entry
point :meth:`PackedKeyHolder.receive`:

* only a :class:`~secagg.packed.messages.PackedAggregate` is ever decrypted; a contribution sent here is refused;
* an aggregate names at least ``min_contributors`` (>= 2) clients (``TooFewContributorsError``) and at most
  ``params.max_cohort`` (``MalformedMessageError``: more could carry across lanes or exhaust the noise budget);
* at most one aggregate is decrypted per ``round_id`` (``DuplicateMessageError``), so overlapping subsets of one
  round cannot be differenced;
* ciphertexts must be fresh-level BFV ciphertexts under this key holder's session in the chunk layout ``dim``
  implies; otherwise nothing is decrypted and nothing changes.

Limit (as for CKKS): the key holder cannot verify that a ciphertext really is the sum it claims to be.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigurationError, DecryptionError, MalformedMessageError
from secagg.he_round import HEKeyHolder, fresh_level
from secagg.packed.messages import PackedAggregate, PackedResult
from secagg.packed.params import PackedParams, load_chunk, make_context, session_id

__all__ = ["PackedKeyHolder"]


class PackedKeyHolder(HEKeyHolder):
    """Generates a BFV key pair for ``params`` and decrypts aggregates of ``min_contributors..max_cohort`` clients."""

    aggregate_type = PackedAggregate

    def __init__(self, params: PackedParams | None = None, *, min_contributors: int = 2) -> None:
        self.params = PackedParams() if params is None else params
        if not isinstance(self.params, PackedParams):
            raise ConfigurationError("params must be a PackedParams")
        self._init_keyholder(min_contributors, self.params.max_cohort)
        self._context = make_context(self.params)
        self._public = self._context.serialize(save_public_key=True, save_secret_key=False,
                                               save_galois_keys=False, save_relin_keys=False)
        self.session_id = session_id(self._public, self.params)
        self._fresh = fresh_level(self._context)
        self._t = self.params.plain_modulus

    def _check_session(self, msg: PackedAggregate) -> None:
        if msg.session_id != self.session_id:
            raise DecryptionError("aggregate was made under another session (other key or lane layout)")

    def _decrypt(self, msg: PackedAggregate) -> PackedResult:
        lengths = self.params.chunk_lengths(msg.dim + 1)
        if len(msg.chunks) != len(lengths):
            raise MalformedMessageError(f"aggregate has {len(msg.chunks)} chunks, dim {msg.dim} needs {len(lengths)}")
        vecs = [load_chunk(self._context, c, length=n, level=self._fresh) for c, n in zip(msg.chunks, lengths)]
        try:
            signed = np.concatenate([np.asarray(v.decrypt(), dtype=np.int64) for v in vecs])
        except Exception as exc:  # SEAL refuses ciphertexts it cannot decrypt
            raise DecryptionError(f"aggregate does not decrypt: {exc}") from exc
        if signed.shape[0] != sum(lengths):
            raise DecryptionError("aggregate decrypted to a vector of the wrong size")
        slots = np.mod(signed, np.int64(self._t)).astype(np.uint64)  # SEAL decodes t/2.. as negative
        return PackedResult(round_id=msg.round_id, contributors=msg.contributors, slots=slots)
