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

_BLOCK = 1 << 18  # coordinates per block of the evaluation


class _Memo:
    """Remembers the last model's evaluation (the aggregator evaluates each global model twice: for the metrics
    row and as the next round's public reference loss)."""

    def __init__(self, fn) -> None:
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, model: np.ndarray) -> dict[str, float]:
        key = hashlib.sha256(memoryview(np.ascontiguousarray(model, dtype=np.float64)).cast("B")).digest()
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
        """Block by block over the coordinates, every client's target drawn in step from its own Generator (the
        same values as :attr:`SyntheticSource.target`): nothing model-sized is held but the model."""
        rngs = [target_stream(self.seed, i) for i in range(self.clients)]
        weights = [client_weight(i) for i in range(self.clients)]
        total, loss = sum(weights), 0.0
        for lo in range(0, self.dim, _BLOCK):
            m = min(_BLOCK, self.dim - lo)
            acc = np.zeros(m)
            for rng, w in zip(rngs, weights):
                acc += w * (rng.uniform(-0.5, 0.5, m) * self.clip)
            acc /= total
            acc -= model[lo:lo + m]
            loss += float(np.dot(acc, acc))
        return {"loss": loss / self.dim}


def target_stream(seed: int, client_id: int) -> np.random.Generator:
    """The Generator client ``client_id``'s target is drawn from (test data, nothing secret)."""
    return np.random.default_rng([seed, client_id])


def client_weight(client_id: int) -> float:
    """The synthetic client's sample count: ``1 + id % 3``."""
    return float(1 + client_id % 3)


class SyntheticSource:
    """A stand-in local trainer: each client pulls the model halfway toward its own fixed target vector.

    The target is test data drawn from a seeded numpy Generator (nothing secret). The local step is the update
    ``Δ = clip(0.5 (target − model))`` with ``1 + id % 3`` samples and loss ``mean((model − target)²)``; the
    ``strategy`` (default FedAvg) encodes it as in ``secagg run``. Values stay in ``[-clip, clip]``.
    """

    def __init__(self, client_id: int, dim: int, *, seed: int = 0, clip: float = 1.0,
                 strategy: Strategy | None = None) -> None:
        self.client_id, self.dim, self.seed = client_id, dim, seed
        self.weight = client_weight(client_id)
        self.clip = clip
        self.strategy = FedAvg() if strategy is None else strategy

    @property
    def target(self) -> np.ndarray:
        """The target vector, drawn again from its seed (not kept: a source holds nothing model-sized)."""
        return target_stream(self.seed, self.client_id).uniform(-0.5, 0.5, self.dim) * self.clip

    def update(self, model: np.ndarray, round_no: int) -> ClientUpdate:
        """The local step from ``model`` (a ClientUpdate, before any encoding), block by block: the target is
        drawn as it is used, so the step holds only the model and the update."""
        rng, delta, squares = target_stream(self.seed, self.client_id), np.empty(self.dim), 0.0
        for lo in range(0, self.dim, _BLOCK):
            m = min(_BLOCK, self.dim - lo)
            d = rng.uniform(-0.5, 0.5, m) * self.clip
            d -= model[lo:lo + m]  # target − model
            squares += float(np.dot(d, d))
            d *= 0.5
            np.clip(d, -self.clip, self.clip, out=delta[lo:lo + m])
        return ClientUpdate(self.client_id, delta, int(self.weight), squares / self.dim, base_version=round_no)

    def encode(self, update: ClientUpdate, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        """The contribution of ``update`` (consumed: the rules' vectors are its delta or fresh arrays, clipped in
        place)."""
        c = contribute(self.strategy, update, round_no, terms, update_clip=None)
        x = c.vector if c.vector.flags.writeable else c.vector.copy()
        return np.clip(x, -self.clip, self.clip, out=x), c.weight

    def contribute(self, model: np.ndarray, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        return self.encode(self.update(model, round_no), round_no, terms)

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray:
        """The vector of a public-weight round (whose weight is :attr:`weight`)."""
        return self.contribute(model, round_no, {})[0]
