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
import tenseal as ts

from secagg.ckks.messages import CKKSAggregate, CKKSContribution, CKKSResult
from secagg.ckks.params import PublicContext, chunk_lengths, fresh_level, load_chunk, load_public_context
from secagg.errors import AuthenticationError, ConfigurationError, DecryptionError, DropoutError, \
    DuplicateMessageError, KeyMisuseError, MalformedMessageError, StageError, UnknownClientError, WrongRoundError
from secagg.roles import KEYHOLDER, AggregateResult, Outbound

__all__ = ["CKKSAggregator"]


class CKKSAggregator:
    """Aggregates the CKKS contributions of ``participants`` for one round of ``dim``-value updates."""

    def __init__(self, public_context: bytes | PublicContext, participants: Iterable[int], *, dim: int,
                 round_id: int = 0, weights: Mapping[int, float] | None = None, min_contributors: int = 2) -> None:
        self._pc = public_context if isinstance(public_context, PublicContext) else \
            load_public_context(public_context, need_public_key=False)
        if self._pc.context.is_private():
            raise KeyMisuseError("the aggregator must never hold the secret key")
        ids = [int(p) for p in participants]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ConfigurationError("participants must be distinct client ids >= 0, at least one")
        for name, v, lo in (("dim", dim, 1), ("round_id", round_id, 0), ("min_contributors", min_contributors, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
        if min_contributors > len(ids):
            raise ConfigurationError(f"min_contributors={min_contributors} exceeds the {len(ids)} participants")
        self.participants, self.dim, self.round_id = tuple(sorted(ids)), dim, round_id
        self.min_contributors = min_contributors
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
        self._sum: list[ts.CKKSVector] | None = None
        self._received: list[int] = []
        self._sent: tuple[int, ...] = ()
        self._result: AggregateResult | None = None
        self._stage = "collect"

    @property
    def weighted_by_aggregator(self) -> bool:
        """True when the aggregator applies public weights; False for client pre-weighted [w*x, w]."""
        return self._scalars is not None

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage == "done"

    @property
    def received(self) -> tuple[int, ...]:
        """Clients whose contribution is in the running sum, in arrival order."""
        return tuple(self._received)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's CKKSContribution, or the key holder's CKKSResult."""
        if sender == KEYHOLDER:
            return self._on_result(payload)
        if self._stage != "collect":
            raise StageError(f"contribution from {sender} arrived in stage {self._stage!r}; collection is closed")
        if sender not in self.participants:
            raise UnknownClientError(f"sender {sender} is not a participant of round {self.round_id}")
        msg = CKKSContribution.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"contribution for round {msg.round_id}; this is round {self.round_id}")
        if msg.client_id != sender:
            raise AuthenticationError(f"sender {sender} sent a contribution naming client {msg.client_id}")
        if sender in self._received:
            raise DuplicateMessageError(f"client {sender} already contributed to round {self.round_id}")
        self._add(msg)
        self._received.append(sender)
        return self._send() if len(self._received) == len(self.participants) else []

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

    def close_stage(self) -> list[Outbound]:
        """Deadline: aggregate whoever submitted (``DropoutError`` if too few). Waiting on the key holder: ``[]``."""
        if self._stage == "finalize":
            return []
        if self._stage != "collect":
            raise StageError(f"nothing to close in stage {self._stage!r}")
        if len(self._received) < self.min_contributors:
            self._stage, self._sum = "failed", None
            raise DropoutError(f"only {len(self._received)} of {len(self.participants)} clients contributed to "
                               f"round {self.round_id}; at least {self.min_contributors} needed")
        return self._send()

    def _send(self) -> list[Outbound]:
        assert self._sum is not None
        self._sent = tuple(sorted(self._received))
        msg = CKKSAggregate(round_id=self.round_id, context_id=self._pc.context_id, dim=self.dim,
                            weight_lane=not self.weighted_by_aggregator, contributors=self._sent,
                            chunks=tuple(v.serialize() for v in self._sum))
        self._sum, self._stage = None, "finalize"
        return [Outbound(KEYHOLDER, msg.to_bytes())]

    def _on_result(self, payload: bytes) -> list[Outbound]:
        if self._stage != "finalize":
            raise StageError(f"a key-holder result arrived in stage {self._stage!r}")
        msg = CKKSResult.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"result for round {msg.round_id}; this is round {self.round_id}")
        if msg.contributors != self._sent:
            raise MalformedMessageError("result names other contributors than the aggregate that was sent")
        if msg.values.shape[0] != sum(self._lengths):
            raise MalformedMessageError(f"result holds {msg.values.shape[0]} values, expected {sum(self._lengths)}")
        values = msg.values.astype(np.float64)
        if self._public_weights is not None:
            weighted_sum = values * self._norm
            total = math.fsum(self._public_weights[i] for i in self._sent)
        else:
            weighted_sum, total = values[:self.dim], float(values[self.dim])
            if not total > 0:
                raise DecryptionError(f"decrypted total weight {total} is not positive")
        dropped = tuple(i for i in self.participants if i not in self._sent)
        self._result = AggregateResult(weighted_sum, total, self._sent, dropped)
        self._stage = "done"
        return []

    def result(self) -> AggregateResult:
        """The decrypted Σ w_i x_i and Σ w_i over the contributors; StageError before ``done``."""
        if self._result is None:
            raise StageError(f"no result in stage {self._stage!r}")
        return self._result
