"""The round bookkeeping of a DP-SGD trainer: reserve a whole round on the ledger before its first step, count
every step exactly once, refuse anything beyond the reservation.

A round is ``steps`` DP-SGD steps (one :class:`~privacy.events.PrivacyEvent` (σ, q, steps), σ the multiplier the
trainer ACCOUNTS, :attr:`RoundAccounting.noise_multiplier`) and its loss releases (σ_L, q, batches). With a
ledger, :meth:`RoundAccounting.begin_round` spends the round on it first (a durable ledger has written it to disk
when it returns): no step or release can outrun the record. ``max_round_steps`` (1 under distributed placement,
:mod:`privacy.placement`) caps what a round may plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privacy.errors import ConfigurationError, PlanExceededError
from privacy.events import PrivacyEvent
from privacy.ledger import PrivacyLedger

__all__ = ["RoundAccounting"]


class RoundAccounting:
    """Mixin: the (σ, q) accounted per step, the open round's plan and the closed rounds' history."""

    noise_multiplier: float
    sample_rate: float
    ledger: PrivacyLedger | None
    max_round_steps: int | None = None

    def _init_rounds(self) -> None:
        self._history: list[PrivacyEvent] = []
        self._releases: list[PrivacyEvent] = []  # the open round's loss releases
        self._round_steps = 0
        self._plan: tuple[int, list[tuple[float, int]]] | None = None  # open round: (steps, loss releases) reserved

    def _count_step(self, _optimizer: Any) -> None:
        self._round_steps += 1

    @property
    def round_steps(self) -> int:
        """DP steps taken in the current (open) round."""
        return self._round_steps

    @property
    def history(self) -> tuple[PrivacyEvent, ...]:
        """The events of the closed rounds: per round its steps, then its loss releases."""
        return tuple(self._history)

    def pending_event(self) -> PrivacyEvent:
        """The current round's steps so far as (σ, q, steps)."""
        return PrivacyEvent(self.noise_multiplier, self.sample_rate, self._round_steps)

    def plan_events(self, steps: int, loss_releases: Sequence[tuple[float, int]] = ()) -> list[PrivacyEvent]:
        """The events of a round of ``steps`` DP-SGD steps and the loss releases ``(σ_L, batches)``."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigurationError(f"steps must be an integer >= 0, got {steps!r}")
        if self.max_round_steps is not None and steps > self.max_round_steps:
            raise ConfigurationError(
                f"a round of {steps} DP-SGD steps: with the noise placed under secure aggregation only one "
                "noisy step per round has a guarantee (a later local step would depend on an individually "
                "un-noised gradient); set local_steps = 1")
        return [PrivacyEvent(self.noise_multiplier, self.sample_rate, steps),
                *(PrivacyEvent(float(s), self.sample_rate, int(b)) for s, b in loss_releases)]

    def begin_round(self, steps: int, *, loss_releases: Sequence[tuple[float, int]] = (),
                    what: str = "round") -> float | None:
        """Reserve the whole round before its first step: ``steps`` DP-SGD steps and each planned loss release
        ``(σ_L, batches)``. With a ledger the reservation is spent on it first (a durable ledger writes it to
        disk before this returns), so no step or release of the round can outrun the record; if the round does
        not fit, BudgetExceededError (spent, needed, budget), nothing recorded and nothing run. Within the round,
        steps and releases beyond the plan raise PlanExceededError. Returns the ledger's ε after the reservation
        (None without a ledger)."""
        if self._plan is not None:
            raise ConfigurationError("a round is already open: end_round() first")
        events = self.plan_events(steps, loss_releases)
        after = None if self.ledger is None else self.ledger.spend_events(events, what)
        self._plan = (steps, [(float(s), int(b)) for s, b in loss_releases])
        return after

    def end_round(self) -> tuple[PrivacyEvent, ...]:
        """Close the round: return its events as taken (its steps, then its loss releases) and add them to
        :attr:`history`. The ledger already holds the round's reservation (at least what was taken)."""
        events = (self.pending_event(), *self._releases)
        self._history.extend(events)
        self._round_steps, self._plan, self._releases = 0, None, []
        return events

    def _check_plan(self) -> None:
        """PlanExceededError unless one more step fits the open round's reservation (or, without a ledger and
        outside a round, always)."""
        if self._plan is None:
            if self.ledger is not None:
                raise PlanExceededError("with a ledger, every step is part of a round reserved by begin_round()")
            if self.max_round_steps is not None:
                raise PlanExceededError("distributed placement: every step is a round reserved by begin_round()")
            return
        if self._round_steps + 1 > self._plan[0]:
            raise PlanExceededError(f"step {self._round_steps + 1} is beyond the {self._plan[0]} steps this round "
                                    "reserved; the step was not taken")
