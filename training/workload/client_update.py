"""What one client's local training produces, before any encoding."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from training.errors import TrainingError

__all__ = ["ClientUpdate"]


@dataclass(frozen=True)
class ClientUpdate:
    """``delta`` = local weights − the global weights the client started from (flat float vector).

    ``base_version`` names that global model; ``loss`` is the mean local training loss (private to the client:
    strategies may only encode it, never send it); ``privacy`` holds the DP events of the local steps.
    """

    client_id: int
    delta: np.ndarray
    num_samples: int
    loss: float
    base_version: int = 0
    seconds: float = 0.0
    steps: int = 0
    privacy: tuple = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.delta, np.ndarray) or self.delta.ndim != 1 or self.delta.size == 0:
            raise TrainingError("delta must be a non-empty 1-D numpy array")
        if not np.all(np.isfinite(self.delta)):
            raise TrainingError(f"client {self.client_id}: delta holds NaN/Inf")
        if self.num_samples <= 0:
            raise TrainingError(f"client {self.client_id}: num_samples must be positive, got {self.num_samples}")
        if not math.isfinite(self.loss):
            raise TrainingError(f"client {self.client_id}: loss must be finite, got {self.loss}")
