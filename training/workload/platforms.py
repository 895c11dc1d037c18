"""Heterogeneous cloud platforms: compute speed, bandwidth and latency of each participant.

Every simulated run executes the real local training and the real secure-aggregation protocol on this machine.
A :class:`PlatformProfile` turns those measurements into a per-platform model of one round:

* compute: the measured local-training seconds divided by ``speed`` (1.0 = this machine);
* communication: ``latency_ms`` per message plus the real bytes sent/received over ``up_mbps`` / ``down_mbps``
  (megabits per second, cross-cloud link to the aggregator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.errors import ConfigError

__all__ = ["PlatformProfile", "DEFAULT_CLOUDS", "profiles_for"]


@dataclass(frozen=True)
class PlatformProfile:
    """One cloud platform. ``speed`` is relative compute throughput; links are in megabits/s; latency is one-way."""

    name: str
    speed: float = 1.0
    up_mbps: float = 1000.0
    down_mbps: float = 1000.0
    latency_ms: float = 20.0

    def __post_init__(self) -> None:
        for field_name in ("speed", "up_mbps", "down_mbps"):
            v = getattr(self, field_name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"platform {self.name!r}: {field_name} must be positive, got {v!r}")
        if self.latency_ms < 0:
            raise ConfigError(f"platform {self.name!r}: latency_ms must be >= 0, got {self.latency_ms}")

    def compute_seconds(self, measured_seconds: float) -> float:
        """Modelled local compute time on this platform for work that took ``measured_seconds`` here."""
        return measured_seconds / self.speed

    def comm_seconds(self, bytes_up: int, bytes_down: int, messages: int = 2) -> float:
        """Modelled transfer time: latency per message plus serialization time on each link."""
        return (messages * self.latency_ms / 1e3 + bytes_up * 8 / (self.up_mbps * 1e6)
                + bytes_down * 8 / (self.down_mbps * 1e6))


DEFAULT_CLOUDS: tuple[PlatformProfile, ...] = (
    PlatformProfile("cloud-a", speed=1.0, up_mbps=1000, down_mbps=2000, latency_ms=15),
    PlatformProfile("cloud-b", speed=0.6, up_mbps=500, down_mbps=1000, latency_ms=35),
    PlatformProfile("cloud-c", speed=1.5, up_mbps=200, down_mbps=400, latency_ms=70),
)


def profiles_for(n_clients: int, profiles: Sequence[PlatformProfile] | None = None) -> list[PlatformProfile]:
    """``n_clients`` profiles: the given ones (must match in number) or the defaults repeated cyclically."""
    if profiles is not None:
        if len(profiles) != n_clients:
            raise ConfigError(f"{len(profiles)} platform profiles for {n_clients} clients")
        return list(profiles)
    return [DEFAULT_CLOUDS[i % len(DEFAULT_CLOUDS)] if i < len(DEFAULT_CLOUDS) else
            PlatformProfile(f"cloud-{i}", DEFAULT_CLOUDS[i % 3].speed, DEFAULT_CLOUDS[i % 3].up_mbps,
                            DEFAULT_CLOUDS[i % 3].down_mbps, DEFAULT_CLOUDS[i % 3].latency_ms)
            for i in range(n_clients)]
