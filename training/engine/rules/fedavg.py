"""FedAvg (formula 1): w = Σ_i (n_i / n) w_i with sample-count weights.

Clients encode their delta Δ_i = w_i − w with public weight n_i; the secure sum yields Σ n_i Δ_i and n = Σ n_i,
so w + Σ n_i Δ_i / n = Σ (n_i/n) w_i exactly (the global w is common to all contributors).
"""

from __future__ import annotations

import numpy as np
from secagg.roles import AggregateResult

from training.engine.rules.base import Contribution, RoundInfo, Strategy, mean_step
from training.workload.client_update import ClientUpdate

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Sample-weighted model averaging; ``server_lr`` = 1 is formula 1 (other values scale the averaged step)."""

    name = "fedavg"
    private_weights = False

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = float(server_lr)

    def encode(self, update: ClientUpdate, info: RoundInfo) -> Contribution:
        return Contribution(update.delta, float(update.num_samples))

    def apply(self, global_vec: np.ndarray, agg: AggregateResult, info: RoundInfo) -> np.ndarray:
        return mean_step(global_vec, agg, self.server_lr)
