"""What a deployment trains: the initial model, each client's update source, the server step, the metrics.

``synthetic``: a model-sized float vector; client i pulls the model halfway toward its own fixed target (test
data from a seeded Generator), so the federation converges to the weight-averaged target and the reported
``loss`` (mean squared distance to it) falls every round. It exercises the transport without torch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from secagg.roles import AggregateResult
from training.errors import ConfigError
from training.transport.client import SyntheticSource, UpdateSource
from training.transport.config import TransportConfig
from training.transport.coordinator import default_apply

__all__ = ["Workload", "SyntheticWorkload", "make_workload"]


class Workload(Protocol):
    dim: int
    ledger_budget: tuple[float, float]  # (ε budget, δ) of the per-client ledgers the aggregator keeps

    def initial_model(self) -> np.ndarray: ...

    def source(self, client_id: int) -> UpdateSource: ...

    def apply(self, model: np.ndarray, result: AggregateResult, round_no: int) -> np.ndarray: ...

    def evaluate(self, model: np.ndarray) -> dict[str, float]: ...


class SyntheticWorkload:
    """Federated mean estimation over ``clients`` fixed targets in ``[-clip/2, clip/2]^dim``."""

    ledger_budget = (1e9, 1e-5)

    def __init__(self, dim: int, clients: int, *, seed: int = 0, clip: float = 1.0) -> None:
        self.dim, self.clients, self.seed, self.clip = dim, clients, seed, clip

    def initial_model(self) -> np.ndarray:
        return np.zeros(self.dim)

    def source(self, client_id: int) -> SyntheticSource:
        return SyntheticSource(client_id, self.dim, seed=self.seed, clip=self.clip)

    def apply(self, model: np.ndarray, result: AggregateResult, round_no: int) -> np.ndarray:
        return default_apply(model, result, round_no)

    def evaluate(self, model: np.ndarray) -> dict[str, float]:
        srcs = [self.source(i) for i in range(self.clients)]
        optimum = sum(s.weight * s.target for s in srcs) / sum(s.weight for s in srcs)
        return {"loss": float(np.mean((model - optimum) ** 2))}


def make_workload(cfg: TransportConfig) -> Workload:
    if cfg.trainer == "synthetic":
        return SyntheticWorkload(cfg.dim, cfg.clients, seed=cfg.seed, clip=cfg.clip)
    if cfg.trainer == "local":
        from training.transport.local_workload import LocalWorkload

        return LocalWorkload(cfg)
    raise ConfigError(f"unknown trainer {cfg.trainer!r}")
