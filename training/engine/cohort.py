"""Cohort policy: who waits, when a round opens, and with whom — the one place that decides sync vs async.

Synchronous strategies: a round opens with ``cohort_size`` waiting clients (chosen uniformly at random by a
CSPRNG if more wait), or with at least ``min_clients`` once the first has waited ``checkin_timeout``.
Buffered asynchronous strategies (``step.buffer_size`` = K): a client checks in with the version its trained update
started from (``base``); one without a (fresh enough, ``step.fresh_enough``) update is sent the current model
instead of waiting, and the first K arrivals with updates form the cohort, weighted publicly by their staleness.
Times are the driver's clock, passed in; nothing here reads a clock.
"""

from __future__ import annotations

import secrets

from secagg.errors import MalformedMessageError
from training.engine.rounds import RoundPolicy
from training.engine.terms import StrategyStep

__all__ = ["Cohorts"]


class Cohorts:
    """The waiting room of one engine."""

    def __init__(self, step: StrategyStep, policy: RoundPolicy) -> None:
        self.step, self.policy = step, policy
        self.waiting: dict[int, float] = {}  # client -> its checked-in public weight
        self.since: float | None = None  # when the oldest waiting client arrived
        self.bases: dict[int, tuple[int, float]] = {}  # async: client -> (base version, arrival time)

    @property
    def asynchronous(self) -> bool:
        return self.step.buffer_size is not None

    def admit(self, cid: int, weight: float, base: int | None, version: int, now: float) -> bool:
        """Put ``cid`` in the waiting room; False when (asynchronous) it has no update fresh enough for
        ``version``: it is then to be sent the current model, and any earlier check-in of it is void."""
        if self.asynchronous:
            if base is not None and not 0 <= base <= version:
                raise MalformedMessageError(f"base version {base} is not in [0, {version}]")
            if base is None or not self.step.fresh_enough(base, version):
                self.withdraw(cid)
                return False
            if self.bases.get(cid, (None,))[0] != base:
                self.bases[cid] = (base, now)
        self.waiting[cid] = float(weight)
        if self.since is None:
            self.since = now
        return True

    def withdraw(self, cid: int) -> None:
        self.waiting.pop(cid, None)
        self.bases.pop(cid, None)
        if not self.waiting:
            self.since = None

    def due(self, now: float) -> float | None:
        """When :meth:`choose` may next succeed by the timeout rule (None: not before another check-in)."""
        if len(self.waiting) >= self.policy.cohort_size:
            return now
        if self.since is None or len(self.waiting) < self.policy.min_clients:
            return None
        return self.since + self.policy.checkin_timeout

    def choose(self, version: int, now: float) -> tuple[dict[int, float], dict[int, int] | None] | None:
        """The next cohort (client -> public weight) and, asynchronous, each member's base version; taken out of
        the waiting room. None if no cohort is due."""
        if self.asynchronous:  # updates that became too stale cannot join: their check-ins end idle
            for c in [c for c in self.waiting if c not in self.bases
                      or not self.step.fresh_enough(self.bases[c][0], version)]:
                self.withdraw(c)
        due = self.due(now)
        if due is None or due > now:
            return None
        k = min(len(self.waiting), self.policy.cohort_size)
        if self.asynchronous:  # a buffer: the first arrivals with a trained update
            chosen = sorted(self.waiting, key=lambda c: self.bases[c][1])[:k]
            cohort = self.step.public_weights({c: self.bases[c][0] for c in chosen}, version)
        else:
            chosen = secrets.SystemRandom().sample(sorted(self.waiting), k)
            cohort = {c: self.waiting[c] for c in chosen}
        bases = {c: self.bases[c][0] for c in chosen} if self.asynchronous else None
        for c in chosen:
            self.waiting.pop(c)
        self.since = now if self.waiting else None
        return cohort, bases

    def put_back(self, cohort: dict[int, float], now: float) -> None:
        """A cohort that could not be opened waits again (its members' async bases are kept)."""
        for c, w in cohort.items():
            self.waiting.setdefault(c, w)
        self.since = now

    def taken(self, ids: list[int]) -> None:
        """The members of an opened round leave the waiting room for good (an async update joins one round)."""
        for c in ids:
            self.bases.pop(c, None)
