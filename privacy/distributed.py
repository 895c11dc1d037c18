"""Distributed DP: the central guarantee of a sum of noisy client updates, against a coalition.

Each of the clients adds a share of the noise to its clipped update before the secure sum; the aggregator sees
only the sum. Two placements:

* **Gaussian shares** (CKKS, packed BFV): shares of std z·C/√n for ``n_clients`` = n; m shares survive.
  A coalition of ``colluders`` = c clients working with the server knows its own shares and subtracts them, so
  only the m − c honest shares protect an honest client: the sum's noise multiplier against the coalition is
  z·√((m − c)/n) (:func:`central_noise_multiplier`). Neighbouring sums differ in one honest client's weighted
  update (sensitivity C·w_ref); rounds compose (q = 1 per round unless clients are sampled).
* **Discrete Gaussian shares** (masking, integers mod 2^k): each client adds a discrete Gaussian of scale s grid
  units to its scaled and rounded update. The sum of h honest shares is not a discrete Gaussian; Kairouz, Liu &
  Steinke (ICML 2021, "The Distributed Discrete Gaussian Mechanism", Thm. 1 with Prop. 14) bound it as
  (ε²/2)-concentrated DP with ε = min(√(Δ₂²/(h s²) + τ·d/2), Δ₁/(√h·s) + τ·√d), τ = 10·Σ_{k=1}^{h−1}
  e^{−2π²s²·k/(k+1)}, for an integer update of L2 norm Δ₂ and L1 norm Δ₁ in d coordinates
  (:func:`discrete_gaussian_rho`). Scaling by ``scale`` and randomized rounding are paid in Δ: a vector of L2 norm
  C scales to C·scale and unbiased rounding adds at most √d in L2 (:func:`rounded_sensitivity`, the
  conservative bound of the paper's conditional rounding without its retry), and Δ₁ <= √d·Δ₂.

Written here because ``dp_accounting`` has no distributed-noise or discrete-Gaussian-sum event; the composition of
what these functions return is done by ``dp_accounting`` (:mod:`privacy.accounting`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from privacy.accounting import Accountant, epsilon_of_events
from privacy.errors import ConfigurationError
from privacy.events import PrivacyEvent

__all__ = ["central_noise_multiplier", "distributed_epsilon", "discrete_gaussian_rho", "rounded_sensitivity",
           "check_colluders"]


def _count(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigurationError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def check_colluders(colluders: object, survivors: int) -> int:
    """``colluders`` as an int in [0, survivors); refuses a coalition that leaves no honest share."""
    c = _count("colluders", colluders, 0)
    if c >= survivors:
        raise ConfigurationError(f"{c} colluding clients among {survivors} surviving shares leave no honest noise: "
                                 "the sum carries no guarantee against them")
    return c


def central_noise_multiplier(noise_multiplier: float, *, n_clients: int, survivors: int, colluders: int = 0,
                             sensitivity_inflation: float = 1.0) -> float:
    """Noise multiplier of the SUM against ``colluders`` clients: z·√((m − c)/n) / inflation.

    Each of ``n_clients`` (n) shares has std z·C/√n; ``survivors`` (m) reach the sum, ``colluders`` (c) of them
    known to the adversary; the sensitivity is C·inflation (inflation > 1 covers quantisation, see
    :func:`privacy.noise.quantization_inflation`). Neighbouring runs differ in one honest surviving client's
    update ("zero-out" neighbours: it still adds its share)."""
    n = _count("n_clients", n_clients, 1)
    m = _count("survivors", survivors, 1)
    if m > n:
        raise ConfigurationError(f"survivors must be an integer in [1, {n}], got {m!r}")
    c = check_colluders(colluders, m)
    if not (math.isfinite(sensitivity_inflation) and sensitivity_inflation >= 1.0):
        raise ConfigurationError(f"sensitivity_inflation must be >= 1, got {sensitivity_inflation!r}")
    PrivacyEvent(noise_multiplier, 1.0, 1)  # validates z
    return noise_multiplier * math.sqrt((m - c) / n) / sensitivity_inflation


def distributed_epsilon(noise_multiplier: float, sample_rate: float, delta: float, *, n_clients: int,
                        survivors: int | Sequence[int], rounds: int | None = None, colluders: int = 0,
                        sensitivity_inflation: float = 1.0, accountant: Accountant = "prv") -> float:
    """Central ε of Gaussian distributed DP after ``rounds`` sums, against ``colluders`` clients.

    ``sample_rate``: the per-round probability that a client is sampled (1.0: everyone, every round).
    ``survivors``: m for every round (with ``rounds``) or one m per round (a sequence; ``rounds`` omitted).
    """
    if isinstance(survivors, int) and not isinstance(survivors, bool):
        if rounds is None:
            raise ConfigurationError("give rounds when survivors is a single integer")
        per_round = [survivors] * rounds
    else:
        if rounds is not None and rounds != len(survivors):
            raise ConfigurationError(f"rounds={rounds} but {len(survivors)} survivor counts given")
        per_round = list(survivors)
    events = [PrivacyEvent(central_noise_multiplier(noise_multiplier, n_clients=n_clients, survivors=m,
                                                    colluders=colluders,
                                                    sensitivity_inflation=sensitivity_inflation), sample_rate, 1)
              for m in per_round]
    return epsilon_of_events(events, delta, accountant=accountant)


def rounded_sensitivity(clip_norm: float, scale: float, dim: int) -> tuple[float, float]:
    """(Δ₂, Δ₁) in grid units of a vector of L2 norm <= ``clip_norm`` scaled by ``scale`` and rounded
    coordinate-wise to a neighbouring integer: Δ₂ <= C·scale + √d, Δ₁ <= √d·Δ₂."""
    for name, v in (("clip_norm", clip_norm), ("scale", scale)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigurationError(f"{name} must be a finite number > 0, got {v!r}")
    d = _count("dim", dim, 1)
    l2 = clip_norm * scale + math.sqrt(d)
    return l2, math.sqrt(d) * l2


def discrete_gaussian_rho(*, l2: float, l1: float, sigma: float, honest: int, dim: int) -> float:
    """ρ (zCDP) of the sum of ``honest`` independent discrete Gaussians of scale ``sigma`` (grid units) per
    coordinate, for integer vectors of L2 norm <= ``l2`` and L1 norm <= ``l1`` in ``dim`` coordinates
    (Kairouz, Liu & Steinke 2021; see the module). ``honest`` = 1 is the exact discrete Gaussian bound Δ₂²/(2s²)."""
    h = _count("honest", honest, 1)
    d = _count("dim", dim, 1)
    for name, v in (("l2", l2), ("l1", l1), ("sigma", sigma)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigurationError(f"{name} must be a finite number > 0, got {v!r}")
    if h == 1:
        return l2 ** 2 / (2.0 * sigma ** 2)
    tau = 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * sigma ** 2 * k / (k + 1)) for k in range(1, h))
    eps = min(math.sqrt(l2 ** 2 / (h * sigma ** 2) + tau * d / 2.0), l1 / (math.sqrt(h) * sigma) + tau * math.sqrt(d))
    return eps ** 2 / 2.0
