"""Independent reference computations for the accounting tests: ε straight from ``dp_accounting``'s PLD, each
event composed on its own (no grouping, no adapter, no RDP)."""

from __future__ import annotations

from collections.abc import Iterable

from dp_accounting import GaussianDpEvent, NeighboringRelation, PoissonSampledDpEvent, SelfComposedDpEvent
from dp_accounting.pld import PLDAccountant

from privacy.events import PrivacyEvent

RELATIONS = {"add-remove": NeighboringRelation.ADD_OR_REMOVE_ONE, "replace-one": NeighboringRelation.REPLACE_ONE}


def pld_epsilon(events: Iterable[PrivacyEvent | tuple[float, float, int]], delta: float,
                relation: str = "add-remove", mesh: float = 1e-3) -> float:
    """ε at ``delta`` of Poisson-subsampled Gaussian ``events`` ((σ, q, steps) each), in the order given."""
    acc = PLDAccountant(RELATIONS[relation], value_discretization_interval=mesh)
    for e in events:
        sigma, q, steps = (e.noise_multiplier, e.sample_rate, e.steps) if isinstance(e, PrivacyEvent) else e
        acc.compose(SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps))
    return float(acc.get_epsilon(delta))
