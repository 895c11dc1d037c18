"""The unit of privacy accounting: ``steps`` applications of a Poisson-subsampled Gaussian mechanism.

A :class:`PrivacyEvent` ``(σ, q, steps)`` says: ``steps`` times, each record was included independently with
probability ``q`` and the sum of per-record contributions (clipped to L2 norm C) received N(0, (σC)²) noise.
Events are validated on construction, so every accountant can trust them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from privacy.errors import ConfigurationError

__all__ = ["PrivacyEvent", "group_events", "check_delta"]


@dataclass(frozen=True)
class PrivacyEvent:
    """``steps`` compositions of the Poisson-subsampled Gaussian with noise multiplier σ and sample rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        sigma, q, steps = self.noise_multiplier, self.sample_rate, self.steps
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigurationError(f"noise_multiplier must be a finite number > 0, got {sigma!r}")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not (0.0 < q <= 1.0):
            raise ConfigurationError(f"sample_rate must be in (0, 1], got {q!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigurationError(f"steps must be an integer >= 0, got {steps!r}")
        object.__setattr__(self, "noise_multiplier", float(sigma))
        object.__setattr__(self, "sample_rate", float(q))

    def to_dict(self) -> dict[str, float | int]:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": self.steps}


def group_events(events: Iterable[PrivacyEvent]) -> list[PrivacyEvent]:
    """Merge events with equal (σ, q) by adding their steps (composition is commutative); drop 0-step events."""
    totals: dict[tuple[float, float], int] = {}
    for e in events:
        if not isinstance(e, PrivacyEvent):
            raise ConfigurationError(f"expected a PrivacyEvent, got {type(e).__name__}")
        if e.steps:
            key = (e.noise_multiplier, e.sample_rate)
            totals[key] = totals.get(key, 0) + e.steps
    return [PrivacyEvent(s, q, t) for (s, q), t in totals.items()]


def check_delta(delta: float) -> float:
    """Return ``delta`` as a float if it is in (0, 1), else raise ConfigurationError."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < delta < 1.0):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)
