"""The distributed discrete Gaussian for integer sums (masking): what a client adds, and the ρ of what is added.

Kairouz, Liu & Steinke (ICML 2021, "The Distributed Discrete Gaussian Mechanism"). Written here because no
maintained library provides the mechanism for a ring-encoded secure sum; the composition of the ρ it returns is
``dp_accounting``'s (a zCDP event, :mod:`privacy.accounting`).

Units. A client's weighted update w·x (L2 norm <= w·C <= w_ref·C) is sent on the masking value grid of ``scale``
levels per unit, so ``unit`` = C·w_ref·scale is one clipped weighted update's L2 bound in levels. n shares of
std s = z·unit/√n sum to std z·unit (z the noise multiplier, n the client's configured noise shares). The exact
sampler (:class:`privacy.noise.DiscreteGaussian`) is used at s/g <= 2^24 for a power-of-two step g >= 1
(:func:`grid_step`): the client rounds w·x·scale/g stochastically to integers k (each coordinate moves by < 1),
adds N_Z(0, (s/g)²) and sends g·k, clamped to the grid's ±max_level (binding with probability below
``dim·2Φ(−9)`` when the value range is widened to 9 share std, as for Gaussian shares: paid from δ). On the
coarse integers this is the discrete Gaussian mechanism: Δ₂ <= unit/g + √d, Δ₁ <= √d·Δ₂, h shares of s/g.

The accounting (:func:`sum_rho`) must hold without the server knowing each round's exact grid, so clients refuse
a grid with fewer than :data:`MIN_UNIT` levels per clipped update, and ρ is computed for the worst grid they
accept: the rounding's relative inflation √d·g/unit is at most max(√d/MIN_UNIT, 2z√d/(√n·2^24)), and the
coarse noise s/g is at least min(z·MIN_UNIT/√n, 2^23); the bound of
:func:`privacy.distributed.discrete_gaussian_rho` only grows with the first and shrinks with the second.
"""

from __future__ import annotations

import math

import numpy as np

from privacy.distributed import discrete_gaussian_rho
from privacy.errors import ConfigurationError, InvalidUpdateError
from privacy.noise import CSPRNG, DiscreteGaussian, share_std

__all__ = ["MIN_UNIT", "SAMPLER_MAX", "grid_step", "discrete_levels", "sum_rho"]

MIN_UNIT = 2.0 ** 16  # levels per clipped weighted update a client accepts (32-bit rings: cohorts to ~3000)
SAMPLER_MAX = 2.0 ** 24  # the coarse noise scale s/g stays at most this (exact, fast sampling)


def grid_step(share_sigma: float) -> int:
    """The power-of-two step g >= 1 with s/g <= 2^24 (g = 1 when s already is)."""
    if not (math.isfinite(share_sigma) and share_sigma > 0):
        raise ConfigurationError(f"the share's scale must be finite and > 0, got {share_sigma!r}")
    return 1 << max(0, math.ceil(math.log2(share_sigma / SAMPLER_MAX)))


def discrete_levels(x: np.ndarray, weight: float, *, scale: float, max_level: int, clip_norm: float,
                    noise_multiplier: float, n_clients: int, reference_weight: float,
                    rng: CSPRNG | None = None) -> np.ndarray:
    """The int64 value lane of a clipped update ``x`` (L2 <= ``clip_norm``) with public weight ``weight``:
    g·(stochastic round of w·x·scale/g + N_Z(0, (s/g)²)), s = z·C·w_ref·scale/√n, clamped to ±max_level.
    Refuses (ConfigurationError) a weight above ``reference_weight`` and a grid below :data:`MIN_UNIT`."""
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise InvalidUpdateError("the update must be a finite 1-D vector")
    if not (math.isfinite(weight) and 0 < weight <= reference_weight and math.isfinite(reference_weight)):
        raise ConfigurationError(f"weight {weight!r} must be in (0, reference_weight={reference_weight!r}]")
    if float(np.linalg.norm(v)) > clip_norm * (1 + 1e-9):
        raise InvalidUpdateError(f"the update's L2 norm exceeds the clip {clip_norm}")
    unit = clip_norm * reference_weight * scale
    if not unit >= MIN_UNIT:
        raise ConfigurationError(f"the round's grid gives {unit:.3g} levels per clipped update, fewer than the "
                                 f"{MIN_UNIT:.0f} the distributed-noise accounting assumes: use more ring bits")
    s = share_std(noise_multiplier, clip_norm, n_clients) * reference_weight * scale
    g = grid_step(s)
    rng = rng or CSPRNG()
    y = v * (weight * scale / g)
    k = np.floor(y)
    k += rng.uniform(v.size) < (y - k)  # unbiased; |k - y| < 1
    k = k.astype(np.int64) + DiscreteGaussian(s / g).sample(v.size, rng=rng)
    top = max_level // g
    return np.clip(k, -top, top) * np.int64(g)


def sum_rho(noise_multiplier: float, *, n_clients: int, honest: int, dim: int) -> float:
    """ρ (zCDP, one client's update in the sum or not) of a sum holding ``honest`` shares of clients configured
    for ``n_clients`` shares at multiplier z, on any grid a client accepts (see the module)."""
    if honest < 1:
        return math.inf
    z, n, d = float(noise_multiplier), int(n_clients), int(dim)
    if not (math.isfinite(z) and z > 0 and n >= 1 and d >= 1):
        raise ConfigurationError("noise_multiplier must be finite and > 0, n_clients and dim >= 1")
    inflation = max(math.sqrt(d) / MIN_UNIT, 2.0 * z * math.sqrt(d) / (math.sqrt(n) * SAMPLER_MAX))
    sigma = min(z * MIN_UNIT / math.sqrt(n), SAMPLER_MAX / 2.0)
    l2 = sigma * math.sqrt(n) / z * (1.0 + inflation)  # Δ₂ in units of the coarse noise scale sigma
    return discrete_gaussian_rho(l2=l2, l1=math.sqrt(d) * l2, sigma=sigma, honest=honest, dim=d)
