"""Privacy accounting: ε of compositions of :class:`~privacy.events.PrivacyEvent` for a named neighbouring relation.

Every ε is computed by Google's ``dp_accounting`` (maintained and tested there); this module is the thin adapter
that turns event lists (heterogeneous σ, q and steps across rounds, DP-SGD steps and DP loss releases alike)
into one composed ``dp_accounting`` event.

* :func:`epsilon` / :func:`epsilon_of_events` — ε at δ, an upper bound. ``accountant="prv"`` (default): the
  smaller of the RDP bound and ``dp_accounting.pld.PLDAccountant`` (pessimistic rounding at a 1e-3 mesh; the PLD
  is the distribution of the privacy random variable, so PRV and PLD are the same quantity); the RDP bound alone
  when the add/remove RDP bound exceeds :data:`PLD_CAP` (a tiny σ would make the PLD grid unbounded in memory;
  the replace-one group bound is not the measure: it can be ten times looser than the PLD) or when an event is a
  zCDP event (no PLD of a continuous Gaussian stands in for a discrete mechanism). ``"rdp"``: the RDP bound.
  No Gaussian-DP/CLT approximation is used: it under-reports ε for small q.
* Neighbouring relations (``relation``): ``"add-remove"`` (one record added or removed: the default, and the
  relation of :func:`epsilon`) and ``"replace-one"`` (one record replaced by another: what holds when the
  record count is public). Replace-one uses the PLD accountant's ``REPLACE_ONE`` relation and, for its RDP bound
  (dp_accounting's RDP accountant has no replace-one Poisson bound), group privacy over the add/remove bound:
  replacing a record is removing it and adding another, so an (ε_a, δ_a) add/remove guarantee gives
  (2ε_a, (1 + e^ε_a)·δ_a) for replace-one; the smallest ε_a whose δ_a fits δ is found by bisection.

The ledgers live in :mod:`privacy.ledger` (in memory) and :mod:`privacy.durable` (on the client's disk);
distributed DP (noise shares, colluders, the discrete Gaussian) in :mod:`privacy.distributed`.

Note on numbers: the RDP conversion used here (Balle et al. 2020 / Canonne et al. 2020, as in dp_accounting and
Opacus >= 1.0) gives ε 10-20% BELOW the figures in older READMEs (TF-Privacy/Opacus 0.x), which used the legacy
``RDP + log(1/δ)/(α-1)`` conversion; PRV is tighter still. The same (σ, q, T, δ) therefore reads smaller here.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Literal

import dp_accounting
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from privacy.errors import ConfigurationError
from privacy.events import PrivacyEvent, check_delta, group_events

__all__ = ["Accountant", "Relation", "RELATIONS", "dp_event", "epsilon", "epsilon_of_events",
           "noise_multiplier_for_epsilon", "check_relation"]

Accountant = Literal["prv", "rdp"]
Relation = Literal["add-remove", "replace-one"]
RELATIONS = ("add-remove", "replace-one")
PLD_MESH = 1e-3  # value discretization of the PLD: ε within 1e-4 of the 1e-4 mesh at a tenth of its time
PLD_CAP = 64.0  # beyond this RDP ε the PLD grid would be huge (σ → 0): the RDP bound is reported instead
# RDP orders: dp_accounting's series for fractional orders below 1.5 may not converge (it then drops the order)
RDP_ORDERS = [1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5, *range(5, 64), 64.0, 80.0, 96.0, 128.0, 256.0, 512.0]
logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's per-order convergence notes


def check_relation(relation: object) -> Relation:
    if relation not in RELATIONS:
        raise ConfigurationError(f"unknown neighbouring relation {relation!r}; expected one of {RELATIONS}")
    return relation  # type: ignore[return-value]


def _one(e: PrivacyEvent) -> dp_accounting.DpEvent:
    if e.mechanism == "zcdp":
        return dp_accounting.ZCDpEvent(e.rho)
    return dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier))


def dp_event(events: Iterable[PrivacyEvent]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of the composition of ``events`` (grouped by (σ, q, mechanism))."""
    return dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(_one(e), e.steps)
                                          for e in group_events(events)])


def epsilon_of_events(events: Iterable[PrivacyEvent], delta: float, *, accountant: Accountant = "prv",
                      relation: Relation = "add-remove") -> float:
    """ε at ``delta`` of the composition of ``events`` for ``relation`` (an upper bound: see the module)."""
    delta = check_delta(delta)
    grouped = group_events(events)
    if accountant not in ("prv", "rdp"):
        raise ConfigurationError(f"unknown accountant {accountant!r}; use 'prv' or 'rdp'")
    check_relation(relation)
    if not grouped:  # nothing released (no steps): ε = 0 under either accountant
        return 0.0
    return _epsilon_of_grouped(tuple(grouped), delta, accountant, relation)


def _rdp_add_remove(event: dp_accounting.DpEvent) -> RdpAccountant:
    rdp = RdpAccountant(RDP_ORDERS)
    rdp.compose(event)
    return rdp


def _replace_one_rdp(rdp: RdpAccountant, delta: float) -> float:
    """Group privacy over the add/remove RDP bound: 2·E for the smallest E with ε_a(δ/(1 + e^E)) <= E."""
    def short(e: float) -> bool:  # the (E, δ/(1+e^E)) add/remove guarantee does not hold yet
        return float(rdp.get_epsilon(delta / (1.0 + math.exp(min(e, 700.0))))) > e

    lo = float(rdp.get_epsilon(delta / 2.0))  # E >= ε_a(δ/2) since δ/(1+e^E) <= δ/2
    hi = max(2.0 * lo, 1e-6)
    while short(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e6:
            return math.inf
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if short(mid) else (lo, mid)
    return 2.0 * hi


@functools.lru_cache(maxsize=1024)
def _epsilon_of_grouped(grouped: tuple[PrivacyEvent, ...], delta: float, accountant: str, relation: str) -> float:
    """A pure function of its (hashable, frozen) arguments, memoized: a PLD composition costs ~0.3 s, and
    budget checks and ledger restores ask for the same compositions again."""
    zcdp = any(e.mechanism == "zcdp" for e in grouped)
    if zcdp and relation != "add-remove":
        raise ConfigurationError("zCDP events carry their own sensitivity: compose them under 'add-remove' "
                                 "with ρ computed for the relation they state")
    event = dp_event(grouped)
    rdp = _rdp_add_remove(event)
    add_remove = float(rdp.get_epsilon(delta))
    bound = add_remove if relation == "add-remove" else _replace_one_rdp(rdp, delta)
    # the PLD grid grows with the privacy loss, which the add/remove bound measures for either relation (the
    # replace-one group bound can be ten times looser: σ = 0.37, q = 0.007, 9 steps: 92 where the PLD says 8.0)
    if accountant == "rdp" or zcdp or add_remove > PLD_CAP:
        return bound
    rel = NeighboringRelation.ADD_OR_REMOVE_ONE if relation == "add-remove" else NeighboringRelation.REPLACE_ONE
    pld = PLDAccountant(rel, value_discretization_interval=PLD_MESH)
    pld.compose(event)
    return min(bound, float(pld.get_epsilon(delta)))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: Accountant = "prv", relation: Relation = "add-remove") -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (noise multiplier σ, sample rate q), add/remove by
    default."""
    return epsilon_of_events([PrivacyEvent(noise_multiplier, sample_rate, steps)], delta, accountant=accountant,
                             relation=relation)


def noise_multiplier_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float, *,
                                 accountant: Accountant = "prv", history: Sequence[PrivacyEvent] = (),
                                 rel_tolerance: float = 0.01, relation: Relation = "add-remove") -> float:
    """Smallest σ (within ``rel_tolerance``) with ε(history + (σ, q, steps)) <= ``target_epsilon``.

    The returned σ always satisfies the target; it is at most ``1 + rel_tolerance`` times the exact minimum.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")

    def eps(sigma: float, acc: Accountant = accountant) -> float:
        return epsilon_of_events([*history, PrivacyEvent(sigma, sample_rate, steps)], delta, accountant=acc,
                                 relation=relation)

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
