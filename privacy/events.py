"""The unit of privacy accounting: ``steps`` applications of one mechanism, validated on construction.

Two mechanisms, each with the (σ, q, steps) fields:

* ``"gaussian"`` (default): ``steps`` times, each record was included independently with probability ``q``
  (Poisson sampling) and the sum of per-record contributions (clipped to L2 norm C) received N(0, (σC)²) noise;
* ``"zcdp"``: ``steps`` releases, each ρ-zCDP with ρ = 1/(2σ²) (the RDP curve of a Gaussian of multiplier σ),
  ``q`` = 1. Discrete mechanisms whose guarantee is proven in zCDP (the distributed discrete Gaussian of
  Kairouz, Liu & Steinke 2021) are recorded so, and accounted with RDP only: no privacy-loss distribution of a
  continuous Gaussian stands in for them.

Events are validated on construction, so every accountant can trust them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from privacy.errors import ConfigurationError

__all__ = ["PrivacyEvent", "MECHANISMS", "group_events", "check_delta", "zcdp_event"]

MECHANISMS = ("gaussian", "zcdp")


@dataclass(frozen=True)
class PrivacyEvent:
    """``steps`` compositions of ``mechanism`` with noise multiplier σ and sample rate q (see the module)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    mechanism: str = "gaussian"

    def __post_init__(self) -> None:
        sigma, q, steps = self.noise_multiplier, self.sample_rate, self.steps
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ConfigurationError(f"noise_multiplier must be a finite number > 0, got {sigma!r}")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not (0.0 < q <= 1.0):
            raise ConfigurationError(f"sample_rate must be in (0, 1], got {q!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigurationError(f"steps must be an integer >= 0, got {steps!r}")
        if self.mechanism not in MECHANISMS:
            raise ConfigurationError(f"unknown mechanism {self.mechanism!r}; expected one of {MECHANISMS}")
        if self.mechanism == "zcdp" and q != 1.0:
            raise ConfigurationError("a zCDP event is not subsampled: its sample_rate must be 1")
        object.__setattr__(self, "noise_multiplier", float(sigma))
        object.__setattr__(self, "sample_rate", float(q))

    @property
    def rho(self) -> float:
        """ρ of one step as zCDP (the Gaussian's curve for either mechanism when q = 1)."""
        return 1.0 / (2.0 * self.noise_multiplier ** 2)

    def to_dict(self) -> dict[str, float | int | str]:
        d: dict[str, float | int | str] = {"noise_multiplier": self.noise_multiplier,
                                           "sample_rate": self.sample_rate, "steps": self.steps}
        if self.mechanism != "gaussian":
            d["mechanism"] = self.mechanism
        return d

    @classmethod
    def from_dict(cls, d: object) -> PrivacyEvent:
        """Inverse of :meth:`to_dict`; ConfigurationError on anything else."""
        if not isinstance(d, dict) or not {"noise_multiplier", "sample_rate", "steps"} <= set(d) \
                or set(d) - {"noise_multiplier", "sample_rate", "steps", "mechanism"}:
            raise ConfigurationError(f"not a privacy event: {d!r}")
        return cls(d["noise_multiplier"], d["sample_rate"], d["steps"], d.get("mechanism", "gaussian"))


def zcdp_event(rho: float, steps: int = 1) -> PrivacyEvent:
    """``steps`` releases of ρ-zCDP each, as an event."""
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ConfigurationError(f"rho must be a finite number > 0, got {rho!r}")
    return PrivacyEvent(1.0 / math.sqrt(2.0 * rho), 1.0, steps, "zcdp")


def group_events(events: Iterable[PrivacyEvent]) -> list[PrivacyEvent]:
    """Merge events with equal (σ, q, mechanism) by adding their steps (composition is commutative); drop
    0-step events."""
    totals: dict[tuple[float, float, str], int] = {}
    for e in events:
        if not isinstance(e, PrivacyEvent):
            raise ConfigurationError(f"expected a PrivacyEvent, got {type(e).__name__}")
        if e.steps:
            key = (e.noise_multiplier, e.sample_rate, e.mechanism)
            totals[key] = totals.get(key, 0) + e.steps
    return [PrivacyEvent(s, q, t, m) for (s, q, m), t in totals.items()]


def check_delta(delta: float) -> float:
    """Return ``delta`` as a float if it is in (0, 1), else raise ConfigurationError."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < delta < 1.0):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)
