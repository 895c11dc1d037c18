"""Packed-BFV aggregator: adds padded ciphertexts without any key, has the key holder verify and decrypt the sum,
unpacks it.

Invariants:

* public material only: a context with a secret key raises ``KeyMisuseError``;
* at most ``params.max_cohort`` participants (``ConfigurationError``), so no lane sum can carry;
* every contribution is fully checked (round, sender, duplicate, session, chunk layout, every residue reduced)
  before any of it is added, so a rejected message never corrupts the running sum;
* contributions are client-pre-weighted ``[w*x, w]`` and only added: the aggregator never learns any ``w_i``;
* the aggregate goes to the key holder once every participant submitted, or at ``close_stage()`` with whoever did;
  fewer than ``min_contributors`` raises ``DropoutError`` and nothing is decrypted.

Stages: ``"collect"`` -> ``"finalize"`` -> ``"done"``; ``"failed"`` after a dropout.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from secagg.errors import ConfigurationError, KeyMisuseError, MalformedMessageError
from secagg.he_round import HEAggregator
from secagg.packed.codec import PackedCodec
from secagg.packed.messages import PackedAggregate, PackedContribution, PackedResult
from secagg.packed.params import PackedParams, PublicBFV, load_public_context, unpack

__all__ = ["PackedAggregator"]


class PackedAggregator(HEAggregator):
    """Aggregates the packed contributions of ``participants`` for one round of ``dim``-value updates."""

    contribution_type, result_type = PackedContribution, PackedResult

    def __init__(self, public_context: bytes | PublicBFV, params: PackedParams, participants: Iterable[int], *,
                 dim: int, weight_bound: float = 1.0, clip: float = 1.0, rounding: str = "stochastic",
                 round_id: int = 0, min_contributors: int = 2) -> None:
        self._pub = public_context if isinstance(public_context, PublicBFV) else \
            load_public_context(public_context, params, need_public_key=False)
        if self._pub.context.is_private() or self._pub.context.has_secret_key():
            raise KeyMisuseError("the aggregator must never hold the secret key")
        if self._pub.params != params:
            raise ConfigurationError("public context was loaded for other packed parameters")
        self._init_round(participants, dim=dim, round_id=round_id, min_contributors=min_contributors,
                         max_cohort=params.max_cohort)
        self.params = params
        self.codec = PackedCodec(params.value_bits, clip=clip, weight_bound=weight_bound, rounding=rounding)
        self._layout = self._pub.layout
        self._chunks = params.chunk_count(dim + 1)

    def _check_header(self, msg: PackedContribution) -> None:
        if msg.session_id != self._pub.session_id:
            raise MalformedMessageError("contribution was made under another session (other key or lane layout)")

    def _aggregate(self, contributors: tuple[int, ...], chunks: tuple[bytes, ...]) -> PackedAggregate:
        return PackedAggregate(round_id=self.round_id, session_id=self._pub.session_id, dim=self.dim,
                               contributors=contributors, chunks=chunks)

    def _decode(self, msg: PackedResult) -> tuple[np.ndarray, float]:
        want = self.params.slots_for(self.dim + 1)
        if msg.slots.shape[0] != want:
            raise MalformedMessageError(f"result holds {msg.slots.shape[0]} slots, expected {want}")
        return self.codec.decode(unpack(msg.slots, self.dim + 1, self.params), len(msg.contributors))
