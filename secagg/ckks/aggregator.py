"""CKKS aggregator: adds padded ciphertexts without any key, then has the key holder verify and decrypt the sum.

Invariants:

* it holds public material only: a context with a secret key raises ``KeyMisuseError``;
* every contribution is fully checked (round, sender, duplicate, context, chunk layout, every residue reduced)
  before it touches the running sum, so a rejected message never corrupts it (:class:`secagg.he_round.HEAggregator`);
* contributions are client-pre-weighted ``[w*x, w]`` and only added: the total weight comes from the decrypted
  weight lane, so the aggregator never learns any ``w_i``;
* the aggregate goes to the key holder once every participant submitted, or at ``close_stage()`` with whoever
  did; fewer than ``min_contributors`` raises ``DropoutError`` and nothing is decrypted.

Stages: ``"collect"`` -> ``"finalize"`` (aggregate sent, waiting for the key holder) -> ``"done"``; ``"failed"``
after a dropout.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from secagg.ckks.messages import CKKSAggregate, CKKSContribution, CKKSResult
from secagg.ckks.params import GUARD_SLOTS, PublicContext, chunk_count, load_public_context
from secagg.errors import DecryptionError, KeyMisuseError, MalformedMessageError
from secagg.he_round import HEAggregator, check_int
from secagg.he_stream import DEFAULT_WINDOW_BYTES

__all__ = ["CKKSAggregator"]


class CKKSAggregator(HEAggregator):
    """Aggregates the CKKS contributions of ``participants`` for one round of ``dim``-value updates."""

    contribution_type, result_type = CKKSContribution, CKKSResult

    def __init__(self, public_context: bytes | PublicContext, participants: Iterable[int], *, dim: int,
                 round_id: int = 0, min_contributors: int = 2, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self._pc = public_context if isinstance(public_context, PublicContext) else \
            load_public_context(public_context, need_public_key=False)
        if self._pc.context.is_private() or self._pc.context.has_secret_key():
            raise KeyMisuseError("the aggregator must never hold the secret key")
        self._layout = self._pc.layout
        self._chunks = chunk_count(check_int("dim", dim, 1) + 1 + GUARD_SLOTS, self._pc.params.slots)
        self._init_round(participants, dim=dim, round_id=round_id, min_contributors=min_contributors,
                         window_bytes=window_bytes)

    def _check_header(self, msg: CKKSContribution) -> None:
        if msg.context_id != self._pc.context_id:
            raise MalformedMessageError("contribution was encrypted under a different public context")

    def _aggregate(self, contributors: tuple[int, ...], first: int, chunks: tuple[bytes, ...],
                   tags: tuple[bytes, ...]) -> CKKSAggregate:
        return CKKSAggregate(round_id=self.round_id, context_id=self._pc.context_id, dim=self.dim,
                             contributors=contributors, first=first, chunks=chunks, tags=tags)

    def _decode(self, msg: CKKSResult) -> tuple[np.ndarray, float]:
        if msg.values.shape[0] != self.dim + 1:
            raise MalformedMessageError(f"result holds {msg.values.shape[0]} values, expected {self.dim + 1}")
        total = float(msg.values[self.dim])
        if not total > 0:
            raise DecryptionError(f"decrypted total weight {total} is not positive")
        return msg.values[:self.dim], total  # a read-only view of the release (kept as the proof): no copy
