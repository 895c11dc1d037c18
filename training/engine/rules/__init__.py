"""Aggregation strategies on top of secure aggregation (formulas 1–4 of the seed paper)."""

from training.engine.rules.asynchronous import BufferedAsync, staleness_weight
from training.engine.rules.base import Contribution, RoundInfo, Strategy
from training.engine.rules.fedavg import FedAvg
from training.engine.rules.gradient import GradientAggregation
from training.engine.rules.loss_weighted import LossWeighted, loss_weight

__all__ = ["Strategy", "Contribution", "RoundInfo", "FedAvg", "LossWeighted", "GradientAggregation",
           "BufferedAsync", "staleness_weight", "loss_weight", "make_strategy"]

_NAMES = {"fedavg": FedAvg, "loss-weighted": LossWeighted, "gradient": GradientAggregation, "async": BufferedAsync}


def make_strategy(name: str, **options: object) -> Strategy:
    """Build a strategy by CLI name (``fedavg``, ``loss-weighted``, ``gradient``, ``async``) with its options."""
    from training.errors import ConfigError

    if name not in _NAMES:
        raise ConfigError(f"unknown aggregator {name!r}; expected one of {sorted(_NAMES)}")
    try:
        return _NAMES[name](**options)
    except TypeError as e:
        raise ConfigError(f"bad options for aggregator {name!r}: {e}") from None
