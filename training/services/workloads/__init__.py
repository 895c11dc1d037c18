"""What a deployment trains, for every networked driver (gRPC services, Flower): the initial model, each
client's update source, the server step and the evaluation.

``synthetic`` (:mod:`.synthetic`): seeded mean estimation without torch; ``local`` (:mod:`.local`): the run file's
language model, trained by every client on its shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from training.engine.terms import StrategyStep
from training.errors import ConfigError

from training.services.workloads.synthetic import SyntheticSource, SyntheticWorkload

if TYPE_CHECKING:
    from training.deployment import TransportConfig

__all__ = ["Workload", "UpdateSource", "make_workload", "SyntheticWorkload", "SyntheticSource"]


class UpdateSource(Protocol):
    """Where a client's update comes from: ``weight`` is public (announced at check-in).

    ``contribute(model, round_no, terms) -> (vector, weight)`` is the general form: ``terms`` are the round's
    public strategy terms (:mod:`training.engine.terms`), and the weight is whatever the strategy encodes (secret when
    ``terms["private_weights"]``). Sources without it have public weights only: ``compute`` gives the vector and
    ``weight`` the weight. Sources for asynchronous strategies split ``contribute`` into ``update(model,
    version) -> ClientUpdate`` (local training) and ``encode(update, round_no, terms) -> (vector, weight)``."""

    weight: float

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray: ...


class Workload(Protocol):
    dim: int
    ledger_budget: tuple[float | None, float]  # (ε budget or None, δ) of the client ledgers the aggregator keeps
    colluders: int | None  # distributed DP: the coalition the central ε is stated against (None: the default)

    def initial_model(self) -> np.ndarray: ...

    def source(self, client_id: int) -> UpdateSource: ...

    def step(self) -> StrategyStep: ...

    def evaluate(self, model: np.ndarray) -> dict[str, float]: ...


def make_workload(cfg: "TransportConfig") -> Workload:
    if cfg.trainer == "synthetic":
        return SyntheticWorkload(cfg.dim, cfg.clients, seed=cfg.seed, clip=cfg.clip, strategy=cfg.strategy)
    if cfg.trainer == "local":
        from training.services.workloads.lm import LocalWorkload

        return LocalWorkload(cfg)
    raise ConfigError(f"unknown trainer {cfg.trainer!r}")

