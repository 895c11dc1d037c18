"""CKKS client: encrypts ``[w*x, w]`` under the key holder's public key, pads it, and sends it once.

Invariants: the client holds public material only (a context with a secret key raises ``KeyMisuseError``, so the
key never spreads to clients). It sends the key holder one sealed pad seed and the aggregator one
:class:`~secagg.ckks.messages.CKKSContribution`, whole or streamed in parts (see :mod:`secagg.he_round`), and
receives nothing. It always
pre-weights: the aggregator only adds and never learns ``w``, and cannot re-weight a contribution without the key
holder refusing the sum.

Range: a decrypted sum wraps silently past the parameter set's bound, so the client refuses any slot that could
push the sum past it: ``max(|w*x|, w) <= fresh_value_bound / max_cohort`` for a sum of at most ``max_cohort``
clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.ckks.messages import CKKSContribution
from secagg.ckks.params import GUARD_SLOTS, PublicContext, chunk_count, load_public_context
from secagg.encoding import update_slice
from secagg.errors import ConfigurationError, KeyMisuseError, MalformedUpdateError
from secagg.terms import NO_TERMS, TERMS_BYTES
from secagg.he_tags import TAG_KEY_BYTES
from secagg.he_round import HEClient, check_int

__all__ = ["CKKSClient", "DEFAULT_MAX_COHORT"]

DEFAULT_MAX_COHORT = 1024


class CKKSClient(HEClient):
    """One client of one round. Stages: ``"ready"`` -> ``start`` -> ``"done"``. ``identity`` signs its pad seed
    (needed when the seed travels through the aggregator)."""

    def __init__(self, client_id: int, public_context: bytes | PublicContext, *, round_id: int = 0,
                 max_cohort: int = DEFAULT_MAX_COHORT, identity: Ed25519PrivateKey | None = None,
                 terms: bytes = NO_TERMS, tag_key: bytes | None = None) -> None:
        self.client_id, self.round_id = check_int("client_id", client_id), check_int("round_id", round_id)
        check_int("max_cohort", max_cohort, 1)
        self._pc = public_context if isinstance(public_context, PublicContext) else \
            load_public_context(public_context, need_public_key=True)
        if self._pc.context.is_private() or self._pc.context.has_secret_key():
            raise KeyMisuseError("clients must never hold the secret key")
        if not self._pc.context.has_public_key():
            raise ConfigurationError("public context has no public key; clients cannot encrypt")
        self._layout, self._session_id, self._seal_key = self._pc.layout, self._pc.context_id, self._pc.seal_key
        self._identity = identity
        if tag_key is not None and (not isinstance(tag_key, bytes) or len(tag_key) != TAG_KEY_BYTES):
            raise ConfigurationError(f"tag_key must be {TAG_KEY_BYTES} bytes (the key holder's grant)")
        self._tag_key = tag_key
        if not isinstance(terms, bytes) or len(terms) != TERMS_BYTES:
            raise ConfigurationError(f"terms must be a {TERMS_BYTES}-byte digest (secagg.terms.terms_digest)")
        self.terms = terms
        self.slot_bound = self._pc.params.fresh_value_bound / max_cohort
        self._stage = "ready"

    def _chunk_count(self, dim: int) -> int:
        return chunk_count(dim + 1 + GUARD_SLOTS, self._pc.params.slots)

    def _lanes(self, update: Any, dim: int, weight: float) -> Iterator[np.ndarray]:
        slots, total = self._pc.params.slots, dim + 1 + GUARD_SLOTS
        if not weight <= self.slot_bound:
            raise self._too_large(weight)
        for lo in range(0, total, slots):
            hi = min(total, lo + slots)
            lanes = np.zeros(hi - lo)
            top = min(hi, dim)
            if top > lo:
                np.multiply(update_slice(update, lo, top), weight, out=lanes[:top - lo])
                peak = float(np.max(np.abs(lanes[:top - lo])))
                if not peak <= self.slot_bound:
                    raise self._too_large(peak)
            if lo <= dim < hi:
                lanes[dim - lo] = weight
            yield lanes

    def _too_large(self, peak: float) -> MalformedUpdateError:
        return MalformedUpdateError(f"largest encrypted value {peak:.4g} exceeds {self.slot_bound:.4g}; the "
                                    f"decrypted sum could overflow the {self._pc.params.name!r} parameter set")

    def _encrypt_one(self, values: np.ndarray) -> bytes:
        return ts.ckks_vector(self._pc.context, values.tolist()).serialize()

    def _contribution(self, dim: int, first: int, chunks: tuple[bytes, ...], sealed_tags: bytes) -> CKKSContribution:
        return CKKSContribution(round_id=self.round_id, client_id=self.client_id, context_id=self._session_id,
                                dim=dim, first=first, chunks=chunks, sealed_tags=sealed_tags)
