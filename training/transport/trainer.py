"""What a deployment trains: the initial model, each client's update source, the server step, the metrics.

``synthetic``: a model-sized float vector; client i pulls the model halfway toward its own fixed target (test
data from a seeded Generator), so under FedAvg the federation converges to the weight-averaged target and the
reported ``loss`` (mean squared distance to it) falls every round. It exercises the transport without torch, with
the run's aggregation strategy (encode in the clients, apply in the aggregator) exactly as the ``local`` one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import numpy as np

from training.aggregation.base import Strategy
from training.errors import ConfigError
from training.transport.client import SyntheticSource, UpdateSource
from training.transport.config import TransportConfig
from training.engine.terms import StrategyStep

__all__ = ["Workload", "SyntheticWorkload", "make_workload"]


class Workload(Protocol):
    dim: int
    ledger_budget: tuple[float, float]  # (ε budget, δ) of the per-client ledgers the aggregator keeps

    def initial_model(self) -> np.ndarray: ...

    def source(self, client_id: int) -> UpdateSource: ...

    def step(self) -> StrategyStep: ...

    def evaluate(self, model: np.ndarray) -> dict[str, float]: ...


class _Memo:
    """Remembers the last model's evaluation (the aggregator evaluates each global model twice: for the metrics
    row and as the next round's public reference loss)."""

    def __init__(self, fn) -> None:
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, model: np.ndarray) -> dict[str, float]:
        key = hashlib.sha256(np.ascontiguousarray(model, dtype=np.float64).tobytes()).digest()
        if key != self.key:
            self.key, self.value = key, self.fn(model)
        return dict(self.value)


class SyntheticWorkload:
    """Federated mean estimation over ``clients`` fixed targets in ``[-clip/2, clip/2]^dim``; ``strategy`` builds
    a fresh strategy object (default FedAvg) for each party: every client and the aggregator."""

    ledger_budget = (1e9, 1e-5)

    def __init__(self, dim: int, clients: int, *, seed: int = 0, clip: float = 1.0,
                 strategy: Callable[[], Strategy] | None = None) -> None:
        self.dim, self.clients, self.seed, self.clip = dim, clients, seed, clip
        self.strategy = strategy
        self._memo = _Memo(self._evaluate)

    def initial_model(self) -> np.ndarray:
        return np.zeros(self.dim)

    def source(self, client_id: int) -> SyntheticSource:
        return SyntheticSource(client_id, self.dim, seed=self.seed, clip=self.clip,
                               strategy=None if self.strategy is None else self.strategy())

    def step(self) -> StrategyStep:
        return StrategyStep(None if self.strategy is None else self.strategy(),
                            reference=lambda m: self.evaluate(m)["loss"])

    def evaluate(self, model: np.ndarray) -> dict[str, float]:
        """``loss``: mean squared distance to the sample-weighted mean of the targets (FedAvg's fixed point)."""
        return self._memo(model)

    def _evaluate(self, model: np.ndarray) -> dict[str, float]:
        srcs = [self.source(i) for i in range(self.clients)]
        optimum = sum(s.weight * s.target for s in srcs) / sum(s.weight for s in srcs)
        return {"loss": float(np.mean((model - optimum) ** 2))}


def make_workload(cfg: TransportConfig) -> Workload:
    if cfg.trainer == "synthetic":
        return SyntheticWorkload(cfg.dim, cfg.clients, seed=cfg.seed, clip=cfg.clip, strategy=cfg.strategy)
    if cfg.trainer == "local":
        from training.transport.local_workload import LocalWorkload

        return LocalWorkload(cfg)
    raise ConfigError(f"unknown trainer {cfg.trainer!r}")
