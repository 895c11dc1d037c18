"""Packed-BFV client: quantizes ``[w*x, w]``, packs ``params.lanes`` values per slot, appends the zero guard
slots, encrypts under the key holder's public key and pads (see :mod:`secagg.he_round`); sends the key holder one
sealed pad seed and the aggregator one :class:`~secagg.packed.messages.PackedContribution`, and receives nothing.

Invariants: the client holds public material only (a context holding the secret key raises ``KeyMisuseError``);
every lane it sends lies in ``[1, 2^b - 1]`` (see :mod:`secagg.packed.codec`), so an honest cohort of at most
``params.max_cohort`` clients can never carry across lanes. Input outside ``|w*x| <= clip*weight_bound`` or
``0 < w <= weight_bound`` raises ``MalformedUpdateError`` and leaves the client ready to retry.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.errors import ConfigurationError, KeyMisuseError
from secagg.terms import NO_TERMS, TERMS_BYTES
from secagg.he_tags import TAG_KEY_BYTES
from secagg.he_round import HEClient, check_int
from secagg.packed.codec import PackedCodec
from secagg.packed.messages import PackedContribution
from secagg.packed.params import PackedParams, PublicBFV, load_public_context, pack

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

    def _encrypt(self, x: np.ndarray, weight: float) -> list[bytes]:
        slots = np.concatenate([pack(self.codec.encode(x, weight), self.params),
                                np.zeros(self.params.guard_slots, dtype=np.uint64)])
        ctx, n = self._pub.context, self.params.slots
        return [ts.bfv_vector(ctx, slots[i:i + n].tolist()).serialize() for i in range(0, slots.size, n)]

    def _contribution(self, dim: int, chunks: tuple[bytes, ...]) -> PackedContribution:
        return PackedContribution(round_id=self.round_id, client_id=self.client_id, session_id=self._session_id,
                                  dim=dim, chunks=chunks)
