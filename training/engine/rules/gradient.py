"""Gradient aggregation (formula 3): w^{t+1} = w^t − η Σ_i (n_i / n) ∇w_i, optionally with a server optimizer.

Clients send the pseudo-gradient ∇w_i := w^t − w_i = −Δ_i (for one local SGD step at rate γ this is γ times the
true gradient; for E steps it is their sum), weighted by n_i. The secure sum yields the sample-weighted mean
pseudo-gradient g; the server applies ``w − η g`` (``optimizer="sgd"``, η = 1 reproduces FedAvg) or Adam on g
(``optimizer="adam"``, FedOpt/FedAdam of Reddi et al. 2021) with its moment estimates kept across rounds.
"""

from __future__ import annotations

import numpy as np
from secagg.roles import AggregateResult

from training.engine.rules.base import Contribution, RoundInfo, Strategy, mean_step
from training.errors import ConfigError
from training.workload.client_update import ClientUpdate

__all__ = ["GradientAggregation"]


class GradientAggregation(Strategy):
    """Server-side optimizer over the securely averaged pseudo-gradient."""

    name = "gradient"
    private_weights = False

    def __init__(self, lr: float = 1.0, optimizer: str = "sgd", betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-3) -> None:
        if optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown server optimizer {optimizer!r}; expected 'sgd' or 'adam'")
        if not lr > 0:
            raise ConfigError(f"server learning rate must be positive, got {lr}")
        self.lr, self.optimizer, self.betas, self.eps = float(lr), optimizer, betas, float(eps)
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._t = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """Adam's moments and step count (empty before the first Adam step, and always for SGD)."""
        if self._m is None or self._v is None:
            return {}
        return {"m": self._m.copy(), "v": self._v.copy(), "t": np.array(self._t)}

    def load_state_dict(self, state) -> None:
        if not state:
            self._m = self._v = None
            self._t = 0
            return
        m, v, t = (np.asarray(state[k], dtype=np.float64) for k in ("m", "v", "t"))
        if m.shape != v.shape or m.ndim != 1 or t.shape != () or t < 1:
            raise ConfigError("server optimizer state has inconsistent shapes or step count")
        self._m, self._v, self._t = m.copy(), v.copy(), int(t)

    def encode(self, update: ClientUpdate, info: RoundInfo) -> Contribution:
        return Contribution(-update.delta, float(update.num_samples))

    def apply(self, global_vec: np.ndarray, agg: AggregateResult, info: RoundInfo) -> np.ndarray:
        if self.optimizer == "sgd":
            return mean_step(global_vec, agg, -self.lr)  # global - lr * g, exactly
        g = agg.mean
        b1, b2 = self.betas
        if self._m is None:
            self._m, self._v = np.zeros_like(g), np.zeros_like(g)
        self._t += 1
        self._m = b1 * self._m + (1 - b1) * g
        self._v = b2 * self._v + (1 - b2) * g * g
        m_hat = self._m / (1 - b1 ** self._t)
        v_hat = self._v / (1 - b2 ** self._t)
        return global_vec - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
