"""The strategy interface: what each client encodes, and how the server turns the secure sum into a new model.

A strategy never sees an individual update on the server side. Its two halves run on different parties:

* :meth:`Strategy.encode` runs on the client: it maps a :class:`~training.workload.client_update.ClientUpdate` to a
  :class:`Contribution` (the vector and the weight the secure-aggregation client encodes);
* :meth:`Strategy.apply` runs on the server with only the finalized ``AggregateResult`` (Σ w_i x_i, Σ w_i and
  the contributor ids) and public round information.

``private_weights`` says whether weights are secret (clients pre-weight, encoding ``[w·x, w]``, and the
aggregator sees neither w nor x) or public (e.g. sample counts, which the aggregator may apply itself).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from secagg.roles import AggregateResult

from training.workload.client_update import ClientUpdate

__all__ = ["Contribution", "RoundInfo", "Strategy", "mean_step"]


def mean_step(global_vec: np.ndarray, agg: AggregateResult, scale: float) -> np.ndarray:
    """``global_vec + scale * agg.mean`` with one model-sized temporary (the mean, scaled and added in place):
    the same float64 values as the expression, which would hold three."""
    new = agg.mean
    if scale != 1.0:
        new *= scale
    new += global_vec
    return new


@dataclass(frozen=True)
class Contribution:
    """The vector ``x`` and weight ``w > 0`` one client hands to its secure-aggregation client."""

    vector: np.ndarray
    weight: float


@dataclass(frozen=True)
class RoundInfo:
    """Public facts about a server step: its number, the current global version, each contributor's base
    version (the global version it trained from; staleness = ``version - base_versions[i]``), and a public
    reference loss when the server has one (e.g. its validation loss of the current model; ``None`` if not)."""

    round: int
    version: int
    base_versions: Mapping[int, int] = field(default_factory=dict)
    loss_reference: float | None = None

    def staleness(self, client_id: int) -> int:
        return self.version - self.base_versions.get(client_id, self.version)


class Strategy(ABC):
    """Base class: subclasses implement :meth:`encode` (client side) and :meth:`apply` (server side)."""

    name: str = "strategy"
    private_weights: bool = False

    @abstractmethod
    def encode(self, update: ClientUpdate, info: RoundInfo) -> Contribution:
        """Client side: the contribution this client submits to the secure sum."""

    @abstractmethod
    def apply(self, global_vec: np.ndarray, agg: AggregateResult, info: RoundInfo) -> np.ndarray:
        """Server side: the new global vector from the current one and the secure aggregate only."""

    def weight_bound(self, info: RoundInfo) -> float | None:
        """A public upper bound on any client's weight when weights are private (``None``: weights are public)."""
        return None

    def observe_version(self, version: int, global_vec: np.ndarray) -> None:
        """Called with every global model the server publishes (async strategies keep recent ones)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """The server-side state :meth:`apply` carries from round to round (e.g. optimizer moments) as named
        arrays, for a checkpoint saved together with the model; ``{}`` for a stateless strategy."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed server then continues exactly)."""
        if state:
            from training.errors import ConfigError

            raise ConfigError(f"strategy {self.name!r} keeps no state; got {sorted(state)}")
