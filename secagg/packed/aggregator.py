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
from secagg.he_round import HEAggregator, check_int
from secagg.he_stream import DEFAULT_WINDOW_BYTES
from secagg.packed.codec import PackedCodec
from secagg.packed.messages import PackedAggregate, PackedContribution, PackedResult
from secagg.packed.params import PackedParams, PublicBFV, load_public_context, unpack

__all__ = ["PackedAggregator"]


class PackedAggregator(HEAggregator):
    """Aggregates the packed contributions of ``participants`` for one round of ``dim``-value updates."""

    contribution_type, result_type = PackedContribution, PackedResult

    def __init__(self, public_context: bytes | PublicBFV, params: PackedParams, participants: Iterable[int], *,
                 dim: int, weight_bound: float = 1.0, clip: float = 1.0, rounding: str = "stochastic",
                 round_id: int = 0, min_contributors: int = 2, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self._pub = public_context if isinstance(public_context, PublicBFV) else \
            load_public_context(public_context, params, need_public_key=False)
        if self._pub.context.is_private() or self._pub.context.has_secret_key():
            raise KeyMisuseError("the aggregator must never hold the secret key")
        if self._pub.params != params:
            raise ConfigurationError("public context was loaded for other packed parameters")
        self._layout = self._pub.layout
        self._chunks = params.chunk_count(check_int("dim", dim, 1) + 1)
        self._init_round(participants, dim=dim, round_id=round_id, min_contributors=min_contributors,
                         max_cohort=params.max_cohort, window_bytes=window_bytes)
        self.params = params
        self.codec = PackedCodec(params.value_bits, clip=clip, weight_bound=weight_bound, rounding=rounding)

    def _check_header(self, msg: PackedContribution) -> None:
        if msg.session_id != self._pub.session_id:
            raise MalformedMessageError("contribution was made under another session (other key or lane layout)")

    def _aggregate(self, contributors: tuple[int, ...], first: int, chunks: tuple[bytes, ...],
                   tags: tuple[bytes, ...]) -> PackedAggregate:
        return PackedAggregate(round_id=self.round_id, session_id=self._pub.session_id, dim=self.dim,
                               contributors=contributors, first=first, chunks=chunks, tags=tags)

    def _decode(self, msg: PackedResult) -> tuple[np.ndarray, float]:
        want = self.params.slots_for(self.dim + 1)
        if msg.slots.shape[0] != want:
            raise MalformedMessageError(f"result holds {msg.slots.shape[0]} slots, expected {want}")
        n, count, block = len(msg.contributors), self.dim + 1, 1 << 16
        total = self.codec.decode_weight(unpack(msg.slots, count, self.params, self.dim, count), n)
        out = np.empty(self.dim)
        for lo in range(0, self.dim, block):  # block by block: no temporary the size of the whole
            hi = min(self.dim, lo + block)
            out[lo:hi] = self.codec.decode_values(unpack(msg.slots, count, self.params, lo, hi), n)
        return out, total
