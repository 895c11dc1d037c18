"""The packed-BFV key holder: owns the only secret key and releases verified sums, never a single contribution.

Same trust model as :mod:`secagg.ckks.keyholder` (the aggregator may deviate arbitrarily; aggregator and key
holder do not collude; ``receive`` takes the authenticated sender). Invariants enforced by the only entry point
:meth:`PackedKeyHolder.receive` (:class:`secagg.he_keyholder.HEKeyHolder`):

* only a :class:`~secagg.packed.messages.PackedAggregate` is ever decrypted, only if its tags are the sum of its
  named contributors' sealed tags (:mod:`secagg.he_tags`: a term the aggregator added itself passes with
  probability below ``2^-128``), after the pads of exactly its named contributors are removed; a result is released only if every guard slot decrypts to exactly zero, so an
  aggregate whose residual is not a clean encryption (a missing, doubled or foreign contribution) is refused
  (``VerificationError``) with probability ``1 - t^-guard_slots >= 1 - 2^-128``;
* an aggregate names at least ``min_contributors`` (>= 2) clients (``TooFewContributorsError``) and at most
  ``params.max_cohort`` (``MalformedMessageError``: more could carry across lanes or exhaust the noise budget);
* at most one aggregate is processed per ``round_id``, whose seeds are then gone: no contribution is in two sums;
* ``dim`` is bounded by ``max_dim`` and the chunk count checked arithmetically before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secagg.errors import ConfigurationError, DecryptionError
from secagg.hazmat import rlwe
from secagg.he_keyholder import HEKeyHolder, AggregateStream
from secagg.he_round import DEFAULT_MAX_DIM, bundle, ring_of
from secagg.packed.messages import PackedAggregate, PackedResult
from secagg.packed.params import PackedParams, make_context, session_id

__all__ = ["PackedKeyHolder"]


class PackedKeyHolder(HEKeyHolder):
    """Generates a BFV key pair for ``params`` and releases verified sums of ``min_contributors..max_cohort``
    clients; ``peer_identities`` as for :class:`secagg.ckks.KeyHolder`."""

    aggregate_type = PackedAggregate

    def __init__(self, params: PackedParams | None = None, *, min_contributors: int = 2,
                 max_dim: int = DEFAULT_MAX_DIM,
                 peer_identities: Mapping[int, Ed25519PublicKey] | None = None) -> None:
        self.params = PackedParams() if params is None else params
        if not isinstance(self.params, PackedParams):
            raise ConfigurationError("params must be a PackedParams")
        self._init_keyholder(min_contributors, self.params.max_cohort, max_dim, peer_identities)
        self._context = make_context(self.params)
        self._public = bundle(self._context.serialize(save_public_key=True, save_secret_key=False,
                                                      save_galois_keys=False, save_relin_keys=False), self.seal_key,
                              self.release_key)
        self.session_id = session_id(self._public, self.params)
        self._layout, self._parms_id = ring_of(self._context, ntt=False)
        self._t = self.params.plain_modulus

    def _chunk_count(self, dim: int) -> int:
        return self.params.chunk_count(dim + 1)

    def _buffer(self, dim: int) -> np.ndarray:
        return np.empty(self.params.slots_for(dim + 1) + self.params.guard_slots, dtype=np.uint64)

    def _decrypt_part(self, stream: AggregateStream, first: int, residues: np.ndarray) -> None:
        slots, total, t = self.params.slots, stream.plain.shape[0], np.int64(self._t)
        for k, res in enumerate(residues, start=first):
            lo, hi = k * slots, min(total, (k + 1) * slots)
            raw = rlwe.to_tenseal(res, self._layout, parms_id=self._parms_id, scale=None, length=hi - lo)
            try:
                got = np.asarray(ts.bfv_vector_from(self._context, raw).decrypt(), dtype=np.int64)
            except Exception as exc:  # SEAL refuses ciphertexts it cannot decrypt
                raise DecryptionError(f"aggregate does not decrypt: {exc}") from exc
            stream.plain[lo:hi] = np.mod(got, t)  # SEAL decodes t/2.. as negative

    def _finish(self, msg: PackedAggregate, stream: AggregateStream) -> PackedResult:
        g = self.params.guard_slots
        if np.any(stream.plain[-g:] != 0):
            raise self._guard_error("guard slots are not zero")
        return PackedResult(round_id=msg.round_id, contributors=msg.contributors, slots=stream.plain[:-g],
                            terms=b"", signature=b"")
