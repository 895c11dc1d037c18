"""Packed-BFV client: quantizes ``[w*x, w]``, packs ``params.lanes`` values per slot and encrypts under the key
holder's public key; sends one :class:`~secagg.packed.messages.PackedContribution` and receives nothing.

Invariants: the client holds public material only (a secret-key context raises ``KeyMisuseError``); every lane
it sends lies in ``[1, 2^b - 1]`` (see :mod:`secagg.packed.codec`), so an honest cohort of at most
``params.max_cohort`` clients can never carry across lanes. Input outside ``|w*x| <= clip*weight_bound`` or
``0 < w <= weight_bound`` raises ``MalformedUpdateError`` and leaves the client ready to retry.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from secagg.errors import ConfigurationError
from secagg.he_round import HEClient, check_int
from secagg.packed.codec import PackedCodec
from secagg.packed.messages import PackedContribution
from secagg.packed.params import PackedParams, PublicBFV, load_public_context, pack
from secagg.roles import AGGREGATOR, Outbound

__all__ = ["PackedClient"]


class PackedClient(HEClient):
    """One client of one round. Stages: ``"ready"`` -> ``start`` -> ``"done"``."""

    def __init__(self, client_id: int, public_context: bytes | PublicBFV, params: PackedParams, *,
                 weight_bound: float = 1.0, clip: float = 1.0, rounding: str = "stochastic",
                 round_id: int = 0) -> None:
        self.client_id, self.round_id = check_int("client_id", client_id), check_int("round_id", round_id)
        self._pub = public_context if isinstance(public_context, PublicBFV) else \
            load_public_context(public_context, params, need_public_key=True)
        if self._pub.params != params:
            raise ConfigurationError("public context was loaded for other packed parameters")
        self.params = params
        self.codec = PackedCodec(params.value_bits, clip=clip, weight_bound=weight_bound, rounding=rounding)
        self._stage = "ready"

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        """Encode, pack and encrypt ``[weight * update, weight]``."""
        x, w = self._begin(update, weight)
        slots = pack(self.codec.encode(x, w), self.params)
        ctx, n = self._pub.context, self.params.slots
        chunks = tuple(ts.bfv_vector(ctx, slots[i:i + n].tolist()).serialize() for i in range(0, slots.size, n))
        msg = PackedContribution(round_id=self.round_id, client_id=self.client_id, session_id=self._pub.session_id,
                                 dim=int(x.shape[0]), chunks=chunks)
        self._stage = "done"
        return [Outbound(AGGREGATOR, msg.to_bytes())]
