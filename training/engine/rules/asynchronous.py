"""Buffered asynchronous aggregation (formula 4): w^{t+1} = w^t + α_i (w_i − w^t), applied per buffer of K.

The server updates as soon as any K clients have finished; those K form one secure-aggregation cohort, so an
individual update is never exposed by asynchrony. Client i trained from the (possibly stale) global
w^{t−τ_i} and sends Δ_i = w_i − w^{t−τ_i} with the public weight α_i = α · s(τ_i) (staleness is known to the
server, which handed out the versions). From the secure sum Σ α_i Δ_i the server computes

    w^{t+1} = w^t + (1/K) Σ_i α_i (w_i − w^t)
            = w^t + (1/K) [Σ_i α_i Δ_i + Σ_i α_i (w^{t−τ_i} − w^t)],

the second sum from its own history of published models. With K = 1 this is formula 4 exactly.
Staleness functions: ``constant`` s = 1, ``polynomial`` s = (1 + τ)^−a, ``hinge`` s = 1 if τ ≤ b else 1/(a(τ − b) + 1).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from secagg.roles import AggregateResult

from training.engine.rules.base import Contribution, RoundInfo, Strategy
from training.errors import ConfigError
from training.workload.client_update import ClientUpdate

__all__ = ["BufferedAsync", "staleness_weight"]


def staleness_weight(tau: int, kind: str = "polynomial", a: float = 0.5, b: int = 4) -> float:
    """s(τ) in (0, 1], non-increasing in τ; s(0) = 1."""
    if tau < 0:
        raise ConfigError(f"staleness must be >= 0, got {tau}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + tau) ** (-a))
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ConfigError(f"unknown staleness function {kind!r}; expected constant, polynomial or hinge")


class BufferedAsync(Strategy):
    """Formula 4 over buffers of ``buffer_size`` arrivals with staleness-discounted mixing weights α·s(τ)."""

    name = "async"
    private_weights = False

    def __init__(self, buffer_size: int = 2, alpha: float = 1.0, staleness: str = "polynomial",
                 a: float = 0.5, b: int = 4, max_staleness: int = 16) -> None:
        if buffer_size < 1 or not 0 < alpha <= 1 or max_staleness < 0:
            raise ConfigError("need buffer_size >= 1, alpha in (0, 1], max_staleness >= 0")
        staleness_weight(0, staleness, a, b)
        self.buffer_size, self.alpha = int(buffer_size), float(alpha)
        self.kind, self.a, self.b, self.max_staleness = staleness, float(a), int(b), int(max_staleness)
        self._history: OrderedDict[int, np.ndarray] = OrderedDict()

    def mixing_weight(self, tau: int) -> float:
        """α_i = α · s(τ_i)."""
        return self.alpha * staleness_weight(tau, self.kind, self.a, self.b)

    def observe_version(self, version: int, global_vec: np.ndarray) -> None:
        self._history[version] = np.array(global_vec, dtype=np.float64, copy=True)
        while len(self._history) > self.max_staleness + 1:
            self._history.popitem(last=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The kept global versions, as ``"v<version>"`` arrays."""
        return {f"v{version}": vec.copy() for version, vec in self._history.items()}

    def load_state_dict(self, state) -> None:
        self._history = OrderedDict((int(k[1:]), np.array(state[k], dtype=np.float64))
                                    for k in sorted(state, key=lambda k: int(k[1:])))

    def encode(self, update: ClientUpdate, info: RoundInfo) -> Contribution:
        tau = info.version - update.base_version
        if tau > self.max_staleness:
            raise ConfigError(f"client {update.client_id}: staleness {tau} exceeds max_staleness "
                              f"{self.max_staleness}; it must fetch the current model")
        return Contribution(update.delta, self.mixing_weight(tau))

    def apply(self, global_vec: np.ndarray, agg: AggregateResult, info: RoundInfo) -> np.ndarray:
        drift = np.zeros_like(global_vec, dtype=np.float64)
        for cid in agg.contributors:
            base = info.base_versions[cid]
            if base not in self._history:
                raise ConfigError(f"global version {base} of client {cid} is no longer kept (max_staleness)")
            drift += self.mixing_weight(info.version - base) * (self._history[base] - global_vec)
        return global_vec + (agg.weighted_sum + drift) / len(agg.contributors)
