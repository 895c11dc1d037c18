"""Packed-BFV aggregator: adds ciphertexts without any key, has the key holder decrypt the sum only, unpacks it.

Invariants:

* public material only: a context with a secret key raises ``KeyMisuseError``;
* at most ``params.max_cohort`` participants (``ConfigurationError``), so no lane sum can carry;
* every contribution is fully checked (round, sender, duplicate, session, chunk layout, level) before any of it is
  added, so a rejected message never corrupts the running sum;
* contributions are client-pre-weighted ``[w*x, w]`` and only added: the aggregator never learns any ``w_i``;
* the aggregate goes to the key holder once every participant submitted, or at ``close_stage()`` with whoever did;
  fewer than ``min_contributors`` raises ``DropoutError`` and nothing is decrypted.

Stages: ``"collect"`` -> ``"finalize"`` -> ``"done"``; ``"failed"`` after a dropout.
"""

from __future__ import annotations

from collections.abc import Iterable

import tenseal as ts

from secagg.errors import AuthenticationError, ConfigurationError, DropoutError, DuplicateMessageError, \
    KeyMisuseError, MalformedMessageError, StageError, UnknownClientError, WrongRoundError
from secagg.packed.codec import PackedCodec
from secagg.packed.messages import PackedAggregate, PackedContribution, PackedResult
from secagg.packed.params import PackedParams, PublicBFV, fresh_level, load_chunk, load_public_context, unpack
from secagg.roles import KEYHOLDER, AggregateResult, Outbound

__all__ = ["PackedAggregator"]


class PackedAggregator:
    """Aggregates the packed contributions of ``participants`` for one round of ``dim``-value updates."""

    def __init__(self, public_context: bytes | PublicBFV, params: PackedParams, participants: Iterable[int], *,
                 dim: int, weight_bound: float = 1.0, clip: float = 1.0, rounding: str = "stochastic",
                 round_id: int = 0, min_contributors: int = 2) -> None:
        self._pub = public_context if isinstance(public_context, PublicBFV) else \
            load_public_context(public_context, params, need_public_key=False)
        if self._pub.context.is_private():
            raise KeyMisuseError("the aggregator must never hold the secret key")
        if self._pub.params != params:
            raise ConfigurationError("public context was loaded for other packed parameters")
        ids = [int(p) for p in participants]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ConfigurationError("participants must be distinct client ids >= 0, at least one")
        if len(ids) > params.max_cohort:
            raise ConfigurationError(f"{len(ids)} participants exceed max_cohort={params.max_cohort}: their lane sums "
                                     "could carry into each other; use PackedParams(max_cohort=...) of the cohort")
        for name, v, lo in (("dim", dim, 1), ("round_id", round_id, 0), ("min_contributors", min_contributors, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
        if min_contributors > len(ids):
            raise ConfigurationError(f"min_contributors={min_contributors} exceeds the {len(ids)} participants")
        self.params, self.participants, self.dim, self.round_id = params, tuple(sorted(ids)), dim, round_id
        self.min_contributors = min_contributors
        self.codec = PackedCodec(params.value_bits, clip=clip, weight_bound=weight_bound, rounding=rounding)
        self._lengths = params.chunk_lengths(dim + 1)
        self._fresh = fresh_level(self._pub.context)
        self._sum: list[ts.BFVVector] | None = None
        self._received: list[int] = []
        self._sent: tuple[int, ...] = ()
        self._result: AggregateResult | None = None
        self._stage = "collect"

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage == "done"

    @property
    def received(self) -> tuple[int, ...]:
        return tuple(self._received)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's PackedContribution, or the key holder's PackedResult."""
        if sender == KEYHOLDER:
            return self._on_result(payload)
        if self._stage != "collect":
            raise StageError(f"contribution from {sender} arrived in stage {self._stage!r}; collection is closed")
        if sender not in self.participants:
            raise UnknownClientError(f"sender {sender} is not a participant of round {self.round_id}")
        msg = PackedContribution.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"contribution for round {msg.round_id}; this is round {self.round_id}")
        if msg.client_id != sender:
            raise AuthenticationError(f"sender {sender} sent a contribution naming client {msg.client_id}")
        if sender in self._received:
            raise DuplicateMessageError(f"client {sender} already contributed to round {self.round_id}")
        if msg.session_id != self._pub.session_id:
            raise MalformedMessageError("contribution was made under another session (other key or lane layout)")
        if msg.dim != self.dim or len(msg.chunks) != len(self._lengths):
            raise MalformedMessageError(f"contribution of dim {msg.dim} in {len(msg.chunks)} chunks; expected dim "
                                        f"{self.dim} in {len(self._lengths)}")
        vecs = [load_chunk(self._pub.context, c, length=n, level=self._fresh)
                for c, n in zip(msg.chunks, self._lengths)]
        if self._sum is None:
            self._sum = vecs
        else:
            for acc, v in zip(self._sum, vecs):
                acc += v
        self._received.append(sender)
        return self._send() if len(self._received) == len(self.participants) else []

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
        msg = PackedAggregate(round_id=self.round_id, session_id=self._pub.session_id, dim=self.dim,
                              contributors=self._sent, chunks=tuple(v.serialize() for v in self._sum))
        self._sum, self._stage = None, "finalize"
        return [Outbound(KEYHOLDER, msg.to_bytes())]

    def _on_result(self, payload: bytes) -> list[Outbound]:
        if self._stage != "finalize":
            raise StageError(f"a key-holder result arrived in stage {self._stage!r}")
        msg = PackedResult.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"result for round {msg.round_id}; this is round {self.round_id}")
        if msg.contributors != self._sent:
            raise MalformedMessageError("result names other contributors than the aggregate that was sent")
        if msg.slots.shape[0] != sum(self._lengths):
            raise MalformedMessageError(f"result holds {msg.slots.shape[0]} slots, expected {sum(self._lengths)}")
        lanes = unpack(msg.slots, self.dim + 1, self.params)
        weighted_sum, total = self.codec.decode(lanes, len(self._sent))
        dropped = tuple(i for i in self.participants if i not in self._sent)
        self._result = AggregateResult(weighted_sum, total, self._sent, dropped)
        self._stage = "done"
        return []

    def result(self) -> AggregateResult:
        """Σ w_i x_i and Σ w_i over the contributors; StageError before ``done``."""
        if self._result is None:
            raise StageError(f"no result in stage {self._stage!r}")
        return self._result
