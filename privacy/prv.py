"""PRV accountant (privacy random variables / PLD, Gopi, Lee & Wutschitz 2021) for the Poisson-subsampled Gaussian.

For a dominating pair (P, Q) the privacy loss Y = log(P(X)/Q(X)), X ~ P, determines the whole privacy curve:
δ(ε) = E[(1 - exp(ε - Y))₊], and composition adds independent losses. Add/remove neighbours have two pairs,
remove (μ1, μ0) and add (μ0, μ1) with μ0 = N(0, σ²), μ1 = (1 - q)N(0, σ²) + qN(1, σ²); a whole run uses one
direction throughout, so δ(ε) is the larger of the two composed curves (as in dp_accounting's PLD).

Numerical composition and its error (documented bound, Gopi et al. Thm 5.x style):

* Window [-L_lo, L_hi] from RDP Chernoff bounds: P(ΣY >= L) <= exp((α-1)(RDP_T(α) - L)) and
  P(ΣY <= -L) <= exp((α-1)RDP_T(α) - αL) (both directions), each set to δ_tail = δ_err/4.
* Each step's Y is rounded to the nearest multiple of the mesh h (mass per bin from exact CDF differences), then
  shifted by its exact rounding bias s (computed by Simpson's rule on the CDF), so Y - Ỹ has mean 0 and a range
  of width h. Hoeffding: |ΣY - ΣỸ| <= ε_err except with probability δ_hoeff = δ_err/2, when
  h = ε_err / sqrt(T/2 · log(2/δ_hoeff)). Mass outside the window is dropped and counted in δ_err as well.
* Composition is exact on the grid (FFT powers, circular on the window; wrapped mass <= the tail bounds).

Hence  δ_Y(ε + ε_err) <= δ_Ỹ(ε) + δ_err,  and the reported upper bound is ε_up = ε_Ỹ(δ - δ_err) + ε_err,
lower bound ε_lo = ε_Ỹ(δ + δ_err) - ε_err. Defaults: δ_err = δ/1000, ε_err = clip(0.002·ε_RDP, 1e-4, 0.02).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft
from scipy.special import ndtr

from privacy.errors import ConfigurationError
from privacy.events import PrivacyEvent, check_delta, group_events
from privacy.rdp import DEFAULT_ORDERS, rdp_of_events, rdp_to_epsilon

__all__ = ["PRVBounds", "prv_epsilon_bounds"]

_MAX_POINTS = 1 << 25  # 32M grid points (~0.8 GB of working memory): refuse rather than swap


@dataclass(frozen=True)
class PRVBounds:
    """ε bracket from the PRV accountant: ``lower <= true ε <= upper`` up to the documented δ_err slack."""

    lower: float
    estimate: float
    upper: float
    eps_error: float
    delta_error: float
    mesh: float
    points: int


def _inverse_loss(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """x with log(1 - q + q·exp((2x-1)/(2σ²))) = t; -inf where t <= log(1 - q)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = t + np.log1p(-(1.0 - q) * np.exp(-t)) - np.log(q)
        x = sigma * sigma * u + 0.5
    return np.where(t > np.log1p(-q) if q < 1 else np.ones_like(t, dtype=bool), x, -np.inf)


def _cdf_sf(t: np.ndarray, q: float, sigma: float, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(CDF, survival function) of one step's privacy loss in the 'remove' or 'add' direction, at points t."""
    if direction == "remove":  # Y = ℓ(X), X ~ μ1
        x = _inverse_loss(t, q, sigma)
        cdf = (1.0 - q) * ndtr(x / sigma) + q * ndtr((x - 1.0) / sigma)
        sf = (1.0 - q) * ndtr(-x / sigma) + q * ndtr((1.0 - x) / sigma)
    else:  # Y = -ℓ(X), X ~ μ0
        x = _inverse_loss(-t, q, sigma)
        cdf, sf = ndtr(-x / sigma), ndtr(x / sigma)
    return cdf, sf


def _discretize(e: PrivacyEvent, direction: str, k: np.ndarray, h: float) -> tuple[np.ndarray, float, float]:
    """(pmf on grid k·h, rounding-bias shift s, mass outside the window) for one step of event ``e``."""
    y = k * h
    edges = np.append(y - h / 2, y[-1] + h / 2)
    cf_e, sf_e = _cdf_sf(edges, e.sample_rate, e.noise_multiplier, direction)
    cf_m, sf_m = _cdf_sf(y, e.sample_rate, e.noise_multiplier, direction)
    upper = y >= 0  # use survival-function differences in the upper half (accuracy of small tail masses)
    pmf = np.where(upper, sf_e[:-1] - sf_e[1:], cf_e[1:] - cf_e[:-1]).clip(min=0.0)
    bias = np.where(upper, -(sf_e[:-1] - 2 * sf_m + sf_e[1:]), cf_e[:-1] - 2 * cf_m + cf_e[1:]) * (h / 3)
    total = float(pmf.sum())
    outside = max(0.0, float(cf_e[0] + sf_e[-1]))
    return pmf, float(bias.sum()) / total, outside


@dataclass(frozen=True)
class _Grid:
    h: float
    k: np.ndarray  # grid indices, ascending, -K_lo .. K_hi-1
    eps_error: float
    delta_error: float


def _make_grid(events: list[PrivacyEvent], delta: float, eps_error: float | None) -> _Grid:
    rdp = rdp_of_events(events)
    eps_rdp, _ = rdp_to_epsilon(rdp, delta)
    delta_error = delta / 1000.0
    if eps_error is None:
        eps_error = float(np.clip(0.002 * eps_rdp, 1e-4, 0.02))
    elif not (0 < eps_error < 1):
        raise ConfigurationError(f"eps_error must be in (0, 1), got {eps_error}")
    steps = sum(e.steps for e in events)
    h = eps_error / np.sqrt(steps / 2.0 * np.log(2.0 / (delta_error / 2.0)))
    log_tail = np.log(4.0 / delta_error)
    a = DEFAULT_ORDERS
    l_hi = float(np.min(rdp + log_tail / (a - 1.0))) + eps_error + h
    l_lo = float(np.min(((a - 1.0) * rdp + log_tail) / a)) + eps_error + h
    k_lo, k_hi = int(np.ceil(l_lo / h)), int(np.ceil(l_hi / h)) + 1
    n = next_fast_len(k_lo + k_hi, real=True)
    if n > _MAX_POINTS:
        raise ConfigurationError(f"PRV grid of {n} points is too large; raise eps_error or use accountant='rdp'")
    return _Grid(h, np.arange(-k_lo, n - k_lo), eps_error, delta_error)


class _Curve:
    """Composed loss distribution on the grid for one direction: values k·h + shift with probabilities pmf."""

    def __init__(self, events: list[PrivacyEvent], direction: str, grid: _Grid) -> None:
        n = grid.k.size
        spectrum = np.ones(n // 2 + 1, dtype=complex)
        shift, lost = 0.0, 0.0
        for e in events:
            pmf, s, outside = _discretize(e, direction, grid.k, grid.h)
            spectrum *= rfft(np.roll(pmf, grid.k[0])) ** e.steps  # index (k mod n) holds value k·h
            shift += e.steps * s
            lost += e.steps * outside
        composed = np.roll(irfft(spectrum, n=n), -grid.k[0]).clip(min=0.0)
        values = grid.k * grid.h + shift
        keep = values >= 0  # only losses above 0 matter for δ(ε), ε >= 0
        self.values = values[keep]
        p = composed[keep]
        self.tail_p = np.cumsum(p[::-1])[::-1]  # Σ_{i>=j} p_i
        self.tail_pe = np.cumsum((p * np.exp(-self.values))[::-1])[::-1]  # Σ_{i>=j} p_i e^{-v_i}
        self.lost = lost

    def delta(self, eps: float) -> float:
        j = int(np.searchsorted(self.values, eps, side="right"))
        if j >= self.values.size:
            return 0.0
        return max(0.0, float(self.tail_p[j] - np.exp(eps) * self.tail_pe[j]))

    def epsilon(self, delta: float) -> float:
        v, a, b = self.values, self.tail_p, self.tail_pe
        # δ at ε = v_j is A_{j+1} - e^{v_j} B_{j+1}
        d_at = np.append(a[1:] - np.exp(v[:-1]) * b[1:], 0.0)
        if self.delta(0.0) <= delta:
            return 0.0
        j = int(np.argmax(d_at <= delta))  # first grid value where δ drops to the target
        if a[j] - delta <= 0 or b[j] <= 0:
            return float(v[j])
        return float(np.clip(np.log((a[j] - delta) / b[j]), v[j - 1] if j else 0.0, v[j]))


def _curves(events: Iterable[PrivacyEvent], delta: float, eps_error: float | None) -> tuple[list[_Curve], _Grid]:
    grouped = group_events(events)
    if not grouped:
        return [], _Grid(1.0, np.zeros(1), 0.0, 0.0)
    grid = _make_grid(grouped, delta, eps_error)
    return [_Curve(grouped, d, grid) for d in ("remove", "add")], grid


def prv_epsilon_bounds(events: Iterable[PrivacyEvent], delta: float, *, eps_error: float | None = None) -> PRVBounds:
    """Bracket the ε of the composition of ``events`` at ``delta`` (add/remove neighbours)."""
    delta = check_delta(delta)
    curves, grid = _curves(events, delta, eps_error)
    if not curves:
        return PRVBounds(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    slack = grid.delta_error + max(c.lost for c in curves)
    if slack >= delta:
        raise ConfigurationError("PRV truncation error exceeds delta; use accountant='rdp'")
    est = max(c.epsilon(delta) for c in curves)
    up = max(c.epsilon(delta - slack) for c in curves) + grid.eps_error
    lo = max(0.0, max(c.epsilon(delta + slack) for c in curves) - grid.eps_error)
    return PRVBounds(lo, est, up, grid.eps_error, slack, grid.h, int(grid.k.size))

