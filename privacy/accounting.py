"""Privacy accounting: ε of Poisson-subsampled Gaussian runs, a per-client budget ledger, and distributed DP.

Every ε is computed by Google's ``dp_accounting`` (maintained and tested there); this module is the thin adapter
the ledger needs: it turns :class:`~privacy.events.PrivacyEvent` lists (heterogeneous σ, q and steps across
rounds, DP-SGD steps and DP loss releases alike) into one composed ``dp_accounting`` event.

* :func:`epsilon` — ε(σ, q, steps, δ) for add/remove neighbours, ``accountant="prv"`` (default: numerical
  composition of the privacy-loss distribution, ``dp_accounting.pld.PLDAccountant`` with pessimistic rounding at a
  1e-3 mesh, an upper bound; the PLD is the distribution of the privacy random variable, so PRV and PLD are the
  same quantity) or ``"rdp"`` (``dp_accounting.rdp.RdpAccountant``). Both are upper bounds; "prv" reports the
  smaller of the two, and the RDP bound alone when it exceeds :data:`PLD_CAP` (a tiny σ would make the PLD grid
  unbounded in memory). No Gaussian-DP/CLT approximation is used: it under-reports ε for small q.
* :class:`PrivacyLedger` — one per client, composing every local DP-SGD run across rounds (σ, q and steps may
  differ per round). It refuses a run that would exceed the budget with :class:`BudgetExceededError` BEFORE the
  run and before recording anything; persisted as JSON with an exact round trip.
* :func:`distributed_epsilon` — central guarantee of distributed DP, where each of n clients adds a noise share
  of std σC/√n so that the sum of m surviving shares carries std σC·√(m/n) (dropouts degrade the guarantee).

Note on numbers: the RDP conversion used here (Balle et al. 2020 / Canonne et al. 2020, as in dp_accounting and
Opacus >= 1.0) gives ε 10-20% BELOW the figures in older READMEs (TF-Privacy/Opacus 0.x), which used the legacy
``RDP + log(1/δ)/(α-1)`` conversion; PRV is tighter still. The same (σ, q, T, δ) therefore reads smaller here.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from privacy.errors import BudgetExceededError, ConfigurationError, LedgerFormatError
from privacy.events import PrivacyEvent, check_delta, group_events

__all__ = [
    "Accountant",
    "dp_event",
    "epsilon",
    "epsilon_of_events",
    "noise_multiplier_for_epsilon",
    "central_noise_multiplier",
    "distributed_epsilon",
    "PrivacyLedger",
]

Accountant = Literal["prv", "rdp"]
_LEDGER_VERSION = 1
PLD_MESH = 1e-3  # value discretization of the PLD: ε within 1e-4 of the 1e-4 mesh at a tenth of its time
PLD_CAP = 64.0  # beyond this RDP ε the PLD grid would be huge (σ → 0): the RDP bound is reported instead
# RDP orders: dp_accounting's series for fractional orders below 1.5 may not converge (it then drops the order)
RDP_ORDERS = [1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, *range(5, 64), 64.0, 80.0, 96.0, 128.0, 256.0, 512.0]
logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's per-order convergence notes


def dp_event(events: Iterable[PrivacyEvent]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of the composition of ``events`` (grouped by (σ, q))."""
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
            e.steps) for e in group_events(events)])


def epsilon_of_events(events: Iterable[PrivacyEvent], delta: float, *, accountant: Accountant = "prv") -> float:
    """ε at ``delta`` of the composition of ``events`` (an upper bound: pessimistic PLD, or RDP)."""
    delta = check_delta(delta)
    grouped = group_events(events)
    if accountant not in ("prv", "rdp"):
        raise ConfigurationError(f"unknown accountant {accountant!r}; use 'prv' or 'rdp'")
    if not grouped:  # nothing released (no steps): ε = 0 under either accountant
        return 0.0
    return _epsilon_of_grouped(tuple(grouped), delta, accountant)


@functools.lru_cache(maxsize=1024)
def _epsilon_of_grouped(grouped: tuple[PrivacyEvent, ...], delta: float, accountant: str) -> float:
    """A pure function of its (hashable, frozen) arguments, memoized: a PLD composition costs ~0.3 s, and
    budget checks and ledger restores ask for the same compositions again."""
    event = dp_event(grouped)
    rdp = RdpAccountant(RDP_ORDERS)
    rdp.compose(event)
    bound = float(rdp.get_epsilon(delta))
    if accountant == "rdp" or bound > PLD_CAP:  # the PLD only tightens a bound this loose: not worth its memory
        return bound
    pld = PLDAccountant(value_discretization_interval=PLD_MESH)
    pld.compose(event)
    return min(bound, float(pld.get_epsilon(delta)))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: Accountant = "prv") -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (noise multiplier σ, sample rate q), add/remove."""
    return epsilon_of_events([PrivacyEvent(noise_multiplier, sample_rate, steps)], delta, accountant=accountant)


def noise_multiplier_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float, *,
                                 accountant: Accountant = "prv", history: Sequence[PrivacyEvent] = (),
                                 rel_tolerance: float = 0.01) -> float:
    """Smallest σ (within ``rel_tolerance``) with ε(history + (σ, q, steps)) <= ``target_epsilon``.

    The returned σ always satisfies the target; it is at most ``1 + rel_tolerance`` times the exact minimum.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")

    def eps(sigma: float, acc: Accountant = accountant) -> float:
        return epsilon_of_events([*history, PrivacyEvent(sigma, sample_rate, steps)], delta, accountant=acc)

    def search(acc: Accountant, hi: float, factor: float) -> float:
        while eps(hi, acc) > target_epsilon:
            hi *= factor
            if hi > 1e6:
                raise ConfigurationError(f"target ε={target_epsilon} is unreachable (history alone spends too much)")
        lo = hi / factor
        while lo > 1e-3 and eps(lo, acc) <= target_epsilon:
            hi, lo = lo, lo / factor
        while hi / lo > 1.0 + rel_tolerance:
            mid = math.sqrt(lo * hi)
            if eps(mid, acc) <= target_epsilon:
                hi = mid
            else:
                lo = mid
        return hi

    # RDP (cheap) brackets the answer; the PRV search then starts next to it, keeping its grids small
    sigma = search("rdp", 1.0, 2.0)
    return sigma if accountant == "rdp" else search(accountant, sigma, 1.25)


def central_noise_multiplier(noise_multiplier: float, *, n_clients: int, survivors: int,
                             sensitivity_inflation: float = 1.0) -> float:
    """Noise multiplier of the SUM in distributed DP: σ·√(m/n) / inflation.

    Each of ``n_clients`` adds a share of std σC/√n; ``survivors`` (m) shares reach the sum, which therefore has
    std σC·√(m/n) against sensitivity C·inflation (inflation > 1 covers quantisation, see
    :func:`privacy.noise.quantization_inflation`). Neighbouring runs differ in one surviving client's update
    ("zero-out" neighbours: the client still adds its share), so all m shares protect it.
    """
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ConfigurationError(f"n_clients must be an integer >= 1, got {n_clients!r}")
    if isinstance(survivors, bool) or not isinstance(survivors, int) or not (1 <= survivors <= n_clients):
        raise ConfigurationError(f"survivors must be an integer in [1, {n_clients}], got {survivors!r}")
    if not (math.isfinite(sensitivity_inflation) and sensitivity_inflation >= 1.0):
        raise ConfigurationError(f"sensitivity_inflation must be >= 1, got {sensitivity_inflation!r}")
    PrivacyEvent(noise_multiplier, 1.0, 1)  # validates σ
    return noise_multiplier * math.sqrt(survivors / n_clients) / sensitivity_inflation


def distributed_epsilon(noise_multiplier: float, sample_rate: float, delta: float, *, n_clients: int,
                        survivors: int | Sequence[int], rounds: int | None = None,
                        sensitivity_inflation: float = 1.0, accountant: Accountant = "prv") -> float:
    """Central ε of distributed DP after ``rounds`` rounds of summing noisy clipped client updates.

    ``sample_rate`` is the per-round probability that a client is sampled (1.0: everyone, every round).
    ``survivors`` is m for every round (with ``rounds``) or one m per round (a sequence; ``rounds`` omitted).
    """
    if isinstance(survivors, int) and not isinstance(survivors, bool):
        if rounds is None:
            raise ConfigurationError("give rounds when survivors is a single integer")
        per_round = [survivors] * rounds
    else:
        if rounds is not None and rounds != len(survivors):
            raise ConfigurationError(f"rounds={rounds} but {len(survivors)} survivor counts given")
        per_round = list(survivors)
    events = [PrivacyEvent(central_noise_multiplier(noise_multiplier, n_clients=n_clients, survivors=m,
                                                    sensitivity_inflation=sensitivity_inflation), sample_rate, 1)
              for m in per_round]
    return epsilon_of_events(events, delta, accountant=accountant)


class PrivacyLedger:
    """A client's privacy budget across rounds: composes every DP run and refuses overspending up front.

    Invariant: ``spent() <= epsilon_budget`` always holds; :meth:`spend` records only runs that keep it, and
    a refused run (``BudgetExceededError``) leaves the ledger exactly as it was.
    """

    def __init__(self, epsilon_budget: float, delta: float, accountant: Accountant = "prv") -> None:
        if isinstance(epsilon_budget, bool) or not isinstance(epsilon_budget, (int, float)) \
                or not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
            raise ConfigurationError(f"epsilon_budget must be a finite number > 0, got {epsilon_budget!r}")
        if accountant not in ("prv", "rdp"):
            raise ConfigurationError(f"unknown accountant {accountant!r}; use 'prv' or 'rdp'")
        self.epsilon_budget = float(epsilon_budget)
        self.delta = check_delta(delta)
        self.accountant: Accountant = accountant
        self._events: list[PrivacyEvent] = []
        self._spent = 0.0

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        """Every recorded run, in order."""
        return tuple(self._events)

    def spent(self) -> float:
        """ε of everything recorded so far."""
        return self._spent

    def remaining(self) -> float:
        """Budget left, ``epsilon_budget - spent()`` (>= 0)."""
        return max(0.0, self.epsilon_budget - self._spent)

    def epsilon_if(self, events: Iterable[PrivacyEvent]) -> float:
        """ε the ledger would show after also recording ``events``; records nothing."""
        return epsilon_of_events([*self._events, *events], self.delta, accountant=self.accountant)

    def check_events(self, events: Iterable[PrivacyEvent]) -> float:
        """Return ε after ``events`` if it fits the budget, else raise BudgetExceededError; records nothing."""
        events = list(events)
        after = self.epsilon_if(events)
        if after > self.epsilon_budget:
            raise BudgetExceededError(
                f"run would raise ε from {self._spent:.4g} to {after:.4g}, over the budget {self.epsilon_budget:.4g}"
                f" (δ={self.delta:g}); nothing was recorded", epsilon_after=after, budget=self.epsilon_budget)
        return after

    def spend_events(self, events: Iterable[PrivacyEvent]) -> float:
        """Check, then record ``events``; returns the new ε. On refusal nothing changes."""
        events = list(events)
        after = self.check_events(events)
        self._events.extend(e for e in events if e.steps)
        self._spent = after if self._events else 0.0
        return after

    def check(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """:meth:`check_events` for one run of ``steps`` steps at (σ, q)."""
        return self.check_events([PrivacyEvent(noise_multiplier, sample_rate, steps)])

    def spend(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """:meth:`spend_events` for one run of ``steps`` steps at (σ, q)."""
        return self.spend_events([PrivacyEvent(noise_multiplier, sample_rate, steps)])

    def remaining_steps(self, noise_multiplier: float, sample_rate: float, *, max_steps: int = 10**7) -> int:
        """Largest k <= ``max_steps`` such that ``check(σ, q, k)`` passes (0 if not even one step fits)."""
        def fits(k: int) -> bool:
            return self.epsilon_if([PrivacyEvent(noise_multiplier, sample_rate, k)]) <= self.epsilon_budget

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
        return {"version": _LEDGER_VERSION, "epsilon_budget": self.epsilon_budget, "delta": self.delta,
                "accountant": self.accountant, "spent": self._spent, "events": [e.to_dict() for e in self._events]}

    def to_json(self) -> str:
        """JSON text; floats are written with repr precision, so :meth:`from_json` restores them bit for bit."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PrivacyLedger:
        """Inverse of :meth:`to_json`; raises LedgerFormatError on anything malformed."""
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("version") != _LEDGER_VERSION:
                raise LedgerFormatError(f"unknown ledger version {d.get('version') if isinstance(d, dict) else d!r}")
            ledger = cls(d["epsilon_budget"], d["delta"], d["accountant"])
            events = [PrivacyEvent(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in d["events"]]
            spent = d["spent"]
        except LedgerFormatError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerFormatError(f"malformed ledger: {exc}") from exc
        if not isinstance(spent, (int, float)) or isinstance(spent, bool) or not (0 <= spent <= ledger.epsilon_budget):
            raise LedgerFormatError(f"ledger 'spent' {spent!r} is not within [0, budget]")
        recomputed = ledger.epsilon_if(events) if events else 0.0
        if not math.isclose(recomputed, spent, rel_tol=1e-6, abs_tol=1e-9):
            raise LedgerFormatError(f"ledger says spent={spent!r} but its events compose to {recomputed!r}")
        ledger._events, ledger._spent = events, float(spent)
        return ledger

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
        return (f"PrivacyLedger(spent={self._spent:.4g}/{self.epsilon_budget:g}, δ={self.delta:g}, "
                f"{self.accountant}, {len(self._events)} runs)")
