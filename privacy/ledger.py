"""An in-memory privacy ledger: composes a client's releases and refuses overspending before it happens.

:class:`PrivacyLedger` holds a list of :class:`~privacy.events.PrivacyEvent` and an ε budget (or none: it then
records and never refuses) at a fixed δ, accountant and neighbouring relation. It is the aggregator's view of a
client (:mod:`training.engine.state`) and the base of the client's own durable ledger
(:class:`privacy.durable.ClientLedger`), which is the authority.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

from privacy.accounting import Accountant, Relation, check_relation, epsilon_of_events
from privacy.errors import BudgetExceededError, ConfigurationError, LedgerFormatError
from privacy.events import PrivacyEvent, check_delta

__all__ = ["PrivacyLedger", "check_budget"]

_VERSION = 1


def check_budget(epsilon_budget: object) -> float | None:
    """A budget is a finite ε > 0, or None (no budget)."""
    if epsilon_budget is None:
        return None
    if isinstance(epsilon_budget, bool) or not isinstance(epsilon_budget, (int, float)) \
            or not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
        raise ConfigurationError(f"epsilon_budget must be a finite number > 0 or None, got {epsilon_budget!r}")
    return float(epsilon_budget)


class PrivacyLedger:
    """A client's privacy budget across rounds: composes every release and refuses overspending up front.

    Invariant: ``spent() <= epsilon_budget`` always holds; :meth:`spend_events` records only events that keep it,
    and a refused spend (``BudgetExceededError``) leaves the ledger exactly as it was.
    """

    def __init__(self, epsilon_budget: float | None, delta: float, accountant: Accountant = "prv",
                 relation: Relation = "add-remove") -> None:
        if accountant not in ("prv", "rdp"):
            raise ConfigurationError(f"unknown accountant {accountant!r}; use 'prv' or 'rdp'")
        self.epsilon_budget = check_budget(epsilon_budget)
        self.delta = check_delta(delta)
        self.accountant: Accountant = accountant
        self.relation: Relation = check_relation(relation)
        self._events: list[PrivacyEvent] = []
        self._spent = 0.0

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        """Every recorded event, in order."""
        return tuple(self._events)

    def spent(self) -> float:
        """ε of everything recorded so far."""
        return self._spent

    def remaining(self) -> float:
        """Budget left, ``epsilon_budget - spent()`` (>= 0; inf without a budget)."""
        return math.inf if self.epsilon_budget is None else max(0.0, self.epsilon_budget - self._spent)

    def epsilon_if(self, events: Iterable[PrivacyEvent]) -> float:
        """ε the ledger would show after also recording ``events``; records nothing."""
        return epsilon_of_events([*self._events, *events], self.delta, accountant=self.accountant,
                                 relation=self.relation)

    def check_events(self, events: Iterable[PrivacyEvent]) -> float:
        """Return ε after ``events`` if it fits the budget, else raise BudgetExceededError; records nothing."""
        events = list(events)
        after = self.epsilon_if(events)
        if self.epsilon_budget is not None and after > self.epsilon_budget:
            raise BudgetExceededError(
                f"spent ε={self._spent:.4g}, this release needs ε={after:.4g} in all, budget ε={self.epsilon_budget:.4g}"
                f" (δ={self.delta:g}, {self.relation}); nothing was recorded or released",
                epsilon_after=after, budget=self.epsilon_budget)
        return after

    def spend_events(self, events: Iterable[PrivacyEvent], what: str = "release") -> float:
        """Check, then record ``events``; returns the new ε. On refusal nothing changes. ``what`` labels the
        release (kept by the durable ledger)."""
        events = list(events)
        after = self.check_events(events)
        self._events.extend(e for e in events if e.steps)
        self._spent = after if self._events else 0.0
        return after

    def refresh(self) -> PrivacyLedger:
        """Bring the view up to date with its store (nothing to do in memory)."""
        return self

    def check(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """:meth:`check_events` for one run of ``steps`` steps at (σ, q)."""
        return self.check_events([PrivacyEvent(noise_multiplier, sample_rate, steps)])

    def spend(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """:meth:`spend_events` for one run of ``steps`` steps at (σ, q)."""
        return self.spend_events([PrivacyEvent(noise_multiplier, sample_rate, steps)])

    def remaining_steps(self, noise_multiplier: float, sample_rate: float, *, max_steps: int = 10**7) -> int:
        """Largest k <= ``max_steps`` such that ``check(σ, q, k)`` passes (0 if not even one step fits)."""
        def fits(k: int) -> bool:
            return self.epsilon_budget is None or \
                self.epsilon_if([PrivacyEvent(noise_multiplier, sample_rate, k)]) <= self.epsilon_budget

        if fits(max_steps):  # the common case when a caller caps the search at the steps it plans
            return max_steps
        if not fits(1):
            return 0
        lo, hi = 1, 2
        while hi <= max_steps and fits(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, max_steps)  # max_steps does not fit (checked first)
        while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    # -- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": _VERSION, "epsilon_budget": self.epsilon_budget, "delta": self.delta,
                "accountant": self.accountant, "relation": self.relation, "spent": self._spent,
                "events": [e.to_dict() for e in self._events]}

    def to_json(self) -> str:
        """JSON text; floats are written with repr precision, so :meth:`from_json` restores them bit for bit."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: object) -> PrivacyLedger:
        """Inverse of :meth:`to_dict`; LedgerFormatError on anything malformed or inconsistent."""
        try:
            if not isinstance(d, dict) or d.get("version") != _VERSION:
                raise LedgerFormatError(f"unknown ledger version {d.get('version') if isinstance(d, dict) else d!r}")
            ledger = cls(d["epsilon_budget"], d["delta"], d["accountant"], d.get("relation", "add-remove"))
            events = [PrivacyEvent.from_dict(e) for e in d["events"]]
            spent = d["spent"]
        except LedgerFormatError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerFormatError(f"malformed ledger: {exc}") from exc
        budget = math.inf if ledger.epsilon_budget is None else ledger.epsilon_budget
        if not isinstance(spent, (int, float)) or isinstance(spent, bool) or not (0 <= spent <= budget):
            raise LedgerFormatError(f"ledger 'spent' {spent!r} is not within [0, budget]")
        recomputed = ledger.epsilon_if(events) if events else 0.0
        if not math.isclose(recomputed, spent, rel_tol=1e-6, abs_tol=1e-9):
            raise LedgerFormatError(f"ledger says spent={spent!r} but its events compose to {recomputed!r}")
        ledger._events, ledger._spent = events, float(spent)
        return ledger

    @classmethod
    def from_json(cls, text: str | bytes) -> PrivacyLedger:
        """Inverse of :meth:`to_json`; raises LedgerFormatError on anything malformed."""
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise LedgerFormatError(f"malformed ledger: {exc}") from exc
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically (write to a temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivacyLedger) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        budget = "none" if self.epsilon_budget is None else f"{self.epsilon_budget:g}"
        return (f"{type(self).__name__}(spent={self._spent:.4g}/{budget}, δ={self.delta:g}, {self.accountant}, "
                f"{self.relation}, {len(self._events)} events)")
