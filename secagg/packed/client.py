"""Packed-BFV client: quantizes ``[w*x, w]``, packs ``params.lanes`` values per slot, appends the zero guard
slots, encrypts under the key holder's public key and pads (see :mod:`secagg.he_round`); sends the key holder one
sealed pad seed and the aggregator one :class:`~secagg.packed.messages.PackedContribution` (whole or in parts),
and receives nothing.

Invariants: the client holds public material only (a context holding the secret key raises ``KeyMisuseError``);
every lane it sends lies in ``[1, 2^b - 1]`` (see :mod:`secagg.packed.codec`), so an honest cohort of at most
``params.max_cohort`` clients can never carry across lanes. Input outside ``|w*x| <= clip*weight_bound`` or
``0 < w <= weight_bound`` raises ``MalformedUpdateError`` and leaves the client ready to retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.encoding import update_slice
from secagg.errors import ConfigurationError, KeyMisuseError
from secagg.terms import NO_TERMS, TERMS_BYTES
from secagg.he_tags import TAG_KEY_BYTES
from secagg.he_round import HEClient, check_int
from secagg.packed.codec import PackedCodec
from secagg.packed.messages import PackedContribution
from secagg.packed.params import PackedParams, PublicBFV, load_public_context

__all__ = ["PackedClient"]


class PackedClient(HEClient):
    """One client of one round. Stages: ``"ready"`` -> ``start`` -> ``"done"``. ``identity`` signs its pad seed."""

    def __init__(self, client_id: int, public_context: bytes | PublicBFV, params: PackedParams, *,
                 weight_bound: float = 1.0, clip: float = 1.0, rounding: str = "stochastic",
                 round_id: int = 0, identity: Ed25519PrivateKey | None = None,
                 terms: bytes = NO_TERMS, tag_key: bytes | None = None) -> None:
        self.client_id, self.round_id = check_int("client_id", client_id), check_int("round_id", round_id)
        self._pub = public_context if isinstance(public_context, PublicBFV) else \
            load_public_context(public_context, params, need_public_key=True)
        if self._pub.context.is_private() or self._pub.context.has_secret_key():
            raise KeyMisuseError("clients must never hold the secret key")
        if self._pub.params != params:
            raise ConfigurationError("public context was loaded for other packed parameters")
        self.params = params
        self.codec = PackedCodec(params.value_bits, clip=clip, weight_bound=weight_bound, rounding=rounding)
        self._layout, self._session_id, self._seal_key = self._pub.layout, self._pub.session_id, self._pub.seal_key
        self._identity = identity
        if tag_key is not None and (not isinstance(tag_key, bytes) or len(tag_key) != TAG_KEY_BYTES):
            raise ConfigurationError(f"tag_key must be {TAG_KEY_BYTES} bytes (the key holder's grant)")
        self._tag_key = tag_key
        if not isinstance(terms, bytes) or len(terms) != TERMS_BYTES:
            raise ConfigurationError(f"terms must be a {TERMS_BYTES}-byte digest (secagg.terms.terms_digest)")
        self.terms = terms
        self._stage = "ready"

    def _chunk_count(self, dim: int) -> int:
        return self.params.chunk_count(dim + 1)

    def _lanes(self, update: Any, dim: int, weight: float) -> Iterator[np.ndarray]:
        """Slots as :func:`secagg.packed.params.pack` lays out ``[w*x, w]`` (lane ``l`` of slot ``j`` holds value
        ``l*S + j``), then the zero guards, one ciphertext's slots at a time."""
        p = self.params
        wlane, bits = self.codec.encode_weight(weight), np.uint64(p.lane_bits)
        used = p.slots_for(dim + 1)
        total = used + p.guard_slots
        for a in range(0, total, p.slots):
            b = min(total, a + p.slots)
            out = np.zeros(b - a, dtype=np.uint64)
            top = min(b, used)
            for lane in range(p.lanes if top > a else 0):
                lo, hi = lane * used + a, lane * used + top  # the values this lane holds in slots [a, top)
                vals = np.zeros(top - a, dtype=np.uint64)
                if min(hi, dim) > lo:
                    vals[:min(hi, dim) - lo] = self.codec.encode_values(update_slice(update, lo, min(hi, dim)), weight)
                if lo <= dim < hi:
                    vals[dim - lo] = wlane
                out[:top - a] |= vals << (bits * np.uint64(lane))
            yield out

    def _check_values(self, update: Any, dim: int, weight: float) -> None:
        """As the lanes check every value, without encoding (stochastic rounding would draw randomness twice)."""
        self.codec.encode_weight(weight)
        step = max(1, min(dim, self.params.slots))
        for lo in range(0, dim, step):
            self.codec.check_values(update_slice(update, lo, min(dim, lo + step)), weight)

    def _encrypt_one(self, values: np.ndarray) -> bytes:
        return ts.bfv_vector(self._pub.context, values.tolist()).serialize()

    def _contribution(self, dim: int, first: int, chunks: tuple[bytes, ...], sealed_tags: bytes
                      ) -> PackedContribution:
        return PackedContribution(round_id=self.round_id, client_id=self.client_id, session_id=self._session_id,
                                  dim=dim, first=first, chunks=chunks, sealed_tags=sealed_tags)
