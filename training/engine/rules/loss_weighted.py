"""Dynamic loss-weighted aggregation (formula 2): α_i = e^{−L_i} / Σ_j e^{−L_j}, w = Σ α_i w_i.

Privacy invariant: no party but client i ever holds L_i or any function of L_i alone. Each client pre-weights,
encoding the pair ``[e^{−(L_i − s)/T} · Δ_i, e^{−(L_i − s)/T}]`` (the secure-aggregation client puts the weight
in its own encrypted/masked lane); the aggregator and key holder only ever handle ciphertexts/masked vectors and
the final sums Σ e^{−(L_i − s)/T} Δ_i and Σ e^{−(L_i − s)/T}; their quotient is Σ α_i Δ_i.

``s`` (shift) and ``T`` (temperature) are public: the shift cancels in the quotient (softmax is shift-invariant),
``T = 1`` is exactly formula 2. The shift keeps weights near 1 so that fixed-point/CKKS precision is not lost on
tiny e^{−L}. Weights are bounded for range checks: ``L_i − s`` is floored at ``−margin``, so a weight never
exceeds ``e^{margin/T}`` (the floor only binds for a client whose loss is ``margin`` nats below the reference, and
then caps its weight). By default ``s`` is the public reference loss of the round (the server's validation loss of
the current global model); without one (e.g. in :class:`~training.inprocess.session.FederatedSession`) it is the previous
round's cohort soft-min loss ``s − T·log(Σ e^{−(L_i − s)/T} / m)``, computed from the aggregate alone (0 in the
first round). The total Σ e^{−(L_i − s)/T} is revealed to the server: it is an aggregate.
"""

from __future__ import annotations

import math

import numpy as np
from secagg.roles import AggregateResult

from training.engine.rules.base import Contribution, RoundInfo, Strategy, mean_step
from training.errors import ConfigError
from training.workload.client_update import ClientUpdate

__all__ = ["LossWeighted", "loss_weight"]


def loss_weight(loss: float, shift: float, temperature: float = 1.0, margin: float = 4.0) -> float:
    """``exp(−max(loss − shift, −margin) / temperature)``: in (0, e^{margin/T}]."""
    return math.exp(-max(loss - shift, -margin) / temperature)


class LossWeighted(Strategy):
    """Softmax(−L/T) weighting computed under secure aggregation; ``shift=None`` uses the round's reference loss."""

    name = "loss-weighted"
    private_weights = True

    def __init__(self, temperature: float = 1.0, shift: float | None = None, margin: float = 4.0,
                 server_lr: float = 1.0) -> None:
        if not (temperature > 0 and margin > 0):
            raise ConfigError("temperature and margin must be positive")
        self.temperature = float(temperature)
        self.shift = shift
        self.margin = float(margin)
        self.server_lr = float(server_lr)
        self.cohort_loss: float | None = None  # soft-min loss of the last cohort, from its aggregate only

    def _shift(self, info: RoundInfo) -> float:
        if self.shift is not None:
            return float(self.shift)
        if info.loss_reference is not None:
            return float(info.loss_reference)
        return self.cohort_loss if self.cohort_loss is not None else 0.0

    def encode(self, update: ClientUpdate, info: RoundInfo) -> Contribution:
        w = loss_weight(update.loss, self._shift(info), self.temperature, self.margin)
        if not w > 0:
            raise ConfigError(f"loss weight underflowed to 0 (loss far above the shift {self._shift(info)}); "
                              "raise the temperature or set the shift closer to the clients' losses")
        return Contribution(update.delta, w)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The last cohort's soft-min loss (an aggregate; the shift when a round has no reference loss)."""
        return {} if self.cohort_loss is None else {"cohort_loss": np.array(self.cohort_loss)}

    def load_state_dict(self, state) -> None:
        self.cohort_loss = float(state["cohort_loss"]) if "cohort_loss" in state else None

    def weight_bound(self, info: RoundInfo) -> float:
        return math.exp(self.margin / self.temperature)

    def apply(self, global_vec: np.ndarray, agg: AggregateResult, info: RoundInfo) -> np.ndarray:
        if agg.total_weight > 0 and agg.contributors:
            self.cohort_loss = self._shift(info) - self.temperature * math.log(agg.total_weight / len(agg.contributors))
        return mean_step(global_vec, agg, self.server_lr)
