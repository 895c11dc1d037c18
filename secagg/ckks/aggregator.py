"""CKKS aggregator: sums ciphertexts without any key, then has the key holder decrypt the sum only.

Invariants:

* it holds public material only: a context with a secret key raises ``KeyMisuseError``;
* every contribution is fully checked (round, sender, duplicate, context, chunk layout, level, scale) before it
  touches the running sum, and the sum is replaced only after the new one is complete, so a rejected message
  never corrupts it;
* weighting ``weights`` given (public weights): contributions carry ``x`` only; chunk ``k`` of client ``i`` is
  multiplied by the plaintext ``w_i / S`` (``S`` = sum of all participants' weights, so the encrypted sum never
  leaves ``[-max|x|, max|x|]``) and kept at its exact scale Δ^2; the decrypted sum is multiplied back by ``S``.
  Needs a parameter set that supports the multiply. ``weights=None``: contributions are client-pre-weighted
  ``[w*x, w]`` and are only added; the total weight comes from the decrypted weight lane, so the aggregator never
  learns any ``w_i``;
* the aggregate goes to the key holder once every participant submitted, or at ``close_stage()`` with whoever
  did; fewer than ``min_contributors`` raises ``DropoutError`` and nothing is decrypted.

Stages: ``"collect"`` -> ``"finalize"`` (aggregate sent, waiting for the key holder) -> ``"done"``; ``"failed"``
after a dropout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from secagg.ckks.messages import CKKSAggregate, CKKSContribution, CKKSResult
from secagg.ckks.params import PublicContext, chunk_lengths, load_chunk, load_public_context
from secagg.errors import ConfigurationError, DecryptionError, KeyMisuseError, MalformedMessageError
from secagg.he_round import HEAggregator, fresh_level

__all__ = ["CKKSAggregator"]


class CKKSAggregator(HEAggregator):
    """Aggregates the CKKS contributions of ``participants`` for one round of ``dim``-value updates."""

    contribution_type, result_type = CKKSContribution, CKKSResult

    def __init__(self, public_context: bytes | PublicContext, participants: Iterable[int], *, dim: int,
                 round_id: int = 0, weights: Mapping[int, float] | None = None, min_contributors: int = 2) -> None:
        self._pc = public_context if isinstance(public_context, PublicContext) else \
            load_public_context(public_context, need_public_key=False)
        if self._pc.context.is_private():
            raise KeyMisuseError("the aggregator must never hold the secret key")
        self._init_round(participants, dim=dim, round_id=round_id, min_contributors=min_contributors)
        ids = self.participants
        params = self._pc.params
        self._scalars: dict[int, float] | None = None
        self._public_weights: dict[int, float] | None = None
        if weights is not None:
            if not params.supports_multiply:
                raise ConfigurationError(f"parameter set {params.name!r} has no room for a weighted product, so the "
                                         "aggregator cannot apply weights; use client pre-weighting (weights=None)")
            if self._pc.context.auto_rescale:
                raise ConfigurationError("a rescaling context would bias weighted sums; use load_public_context")
            ws = {i: float(weights[i]) for i in ids if i in weights}
            if len(ws) != len(ids) or not all(math.isfinite(w) and w > 0 for w in ws.values()):
                raise ConfigurationError("weights must give every participant a positive finite weight")
            self._norm = math.fsum(ws.values())
            floor = 2.0 ** -(params.scale_bits // 2)
            if min(ws.values()) < floor * self._norm:
                raise ConfigurationError(f"a weight below {floor:.1e} of the total cannot be applied precisely at "
                                         f"scale 2^{params.scale_bits}; use client pre-weighting or drop the client")
            self._public_weights = ws
            self._scalars = {i: w / self._norm for i, w in ws.items()}
        self._lengths = chunk_lengths(dim + (0 if self.weighted_by_aggregator else 1), params.slots)
        self._fresh = fresh_level(self._pc.context)

    @property
    def weighted_by_aggregator(self) -> bool:
        """True when the aggregator applies public weights; False for client pre-weighted [w*x, w]."""
        return self._scalars is not None

    def _add(self, msg: CKKSContribution) -> None:
        if msg.context_id != self._pc.context_id:
            raise MalformedMessageError("contribution was encrypted under a different public context")
        if msg.preweighted == self.weighted_by_aggregator:
            raise MalformedMessageError("contribution is " + ("" if msg.preweighted else "not ") +
                                        "pre-weighted, but this round expects the opposite")
        if msg.dim != self.dim or len(msg.chunks) != len(self._lengths):
            raise MalformedMessageError(f"contribution of dim {msg.dim} in {len(msg.chunks)} chunks; expected dim "
                                        f"{self.dim} in {len(self._lengths)}")
        ctx, scale = self._pc.context, self._pc.params.scale
        vecs = [load_chunk(ctx, c, length=n, level=self._fresh, scale=scale)
                for c, n in zip(msg.chunks, self._lengths)]
        if self._scalars is not None:
            factor = self._scalars[msg.client_id]
            vecs = [v * factor for v in vecs]  # plaintext multiply, not rescaled: exact scale Δ^2 (see params)
        new = vecs if self._sum is None else [a + b for a, b in zip(self._sum, vecs)]
        self._sum = new

    def _aggregate(self, contributors: tuple[int, ...], chunks: tuple[bytes, ...]) -> CKKSAggregate:
        return CKKSAggregate(round_id=self.round_id, context_id=self._pc.context_id, dim=self.dim,
                             weight_lane=not self.weighted_by_aggregator, contributors=contributors, chunks=chunks)

    def _decode(self, msg: CKKSResult) -> tuple[np.ndarray, float]:
        if msg.values.shape[0] != sum(self._lengths):
            raise MalformedMessageError(f"result holds {msg.values.shape[0]} values, expected {sum(self._lengths)}")
        values = msg.values.astype(np.float64)
        if self._public_weights is not None:
            return values * self._norm, math.fsum(self._public_weights[i] for i in msg.contributors)
        total = float(values[self.dim])
        if not total > 0:
            raise DecryptionError(f"decrypted total weight {total} is not positive")
        return values[:self.dim], total
