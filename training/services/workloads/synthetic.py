"""The ``synthetic`` workload: federated mean estimation over seeded targets, with no torch.

Client i pulls the model halfway toward its own fixed target (test data from a seeded Generator), so under
FedAvg the federation converges to the weight-averaged target and the reported ``loss`` (mean squared distance to
it) falls every round. It exercises every driver with the run's aggregation strategy (encode in the clients, apply
in the aggregator) exactly as the ``local`` one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from training.engine.rules import FedAvg
from training.engine.rules.base import Strategy
from training.engine.contribution import contribute
from training.engine.terms import StrategyStep
from training.workload.client_update import ClientUpdate

__all__ = ["SyntheticWorkload", "SyntheticSource"]


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

    ledger_budget = (None, 1e-5)
    colluders = None  # the central ε's coalition: the masking default

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
        acc, total = np.zeros(self.dim), 0.0  # one client's target at a time: memory does not grow with clients
        for i in range(self.clients):
            src = self.source(i)
            acc += src.weight * src.target
            total += src.weight
            del src
        acc /= total
        acc -= model
        return {"loss": float(np.dot(acc, acc) / self.dim)}


class SyntheticSource:
    """A stand-in local trainer: each client pulls the model halfway toward its own fixed target vector.

    The target is test data drawn from a seeded numpy Generator (nothing secret). The local step is the update
    ``Δ = clip(0.5 (target − model))`` with ``1 + id % 3`` samples and loss ``mean((model − target)²)``; the
    ``strategy`` (default FedAvg) encodes it as in ``secagg run``. Values stay in ``[-clip, clip]``.
    """

    def __init__(self, client_id: int, dim: int, *, seed: int = 0, clip: float = 1.0,
                 strategy: Strategy | None = None) -> None:
        rng = np.random.default_rng([seed, client_id])
        self.client_id = client_id
        self.target = rng.uniform(-0.5, 0.5, dim) * clip
        self.weight = float(1 + client_id % 3)
        self.clip = clip
        self.strategy = FedAvg() if strategy is None else strategy

    def update(self, model: np.ndarray, round_no: int) -> ClientUpdate:
        """The local step from ``model`` (a ClientUpdate, before any encoding)."""
        delta = np.clip(0.5 * (self.target - model), -self.clip, self.clip)
        return ClientUpdate(self.client_id, delta, int(self.weight), float(np.mean((model - self.target) ** 2)),
                            base_version=round_no)

    def encode(self, update: ClientUpdate, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        c = contribute(self.strategy, update, round_no, terms, update_clip=None)
        return np.clip(c.vector, -self.clip, self.clip), c.weight

    def contribute(self, model: np.ndarray, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        return self.encode(self.update(model, round_no), round_no, terms)

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray:
        """The vector of a public-weight round (whose weight is :attr:`weight`)."""
        return self.contribute(model, round_no, {})[0]
