"""DP noise from a CSPRNG: Gaussian, exact discrete Gaussian, and distributed-DP noise shares.

Randomness: every draw comes from an AES-256-CTR keystream under a fresh ``os.urandom`` key (:class:`CSPRNG`);
neither ``random`` nor numpy's generators are used. Gaussians use Marsaglia's polar method; like every
floating-point sampler they are not hardened against floating-point side channels (Mironov 2012) — use the
discrete Gaussian where that matters. The discrete Gaussian N_Z(0, σ²) uses Canonne, Kamath & Steinke (2020)
rejection sampling with EXACT integer arithmetic (Bernoulli(exp(-γ)) for rational γ, discrete Laplace
proposals), vectorised over the batch. σ² is rounded UP to a rational that keeps every product inside uint64
(relative excess < 2⁻²⁰ below σ≈6900, < 1/σ above); proposals whose acceptance probability is below exp(-4096)
are rejected outright. :attr:`DiscreteGaussian.variance_param` reports the exact σ² used.

Distributed DP (each of n clients adds a share; the aggregator sees only the noisy sum):

* CKKS / float sums: :func:`gaussian_share` — N(0, (σC)²/n) per client, so m survivors give std σC·√(m/n);
  :func:`weighted_share` scales it by ``w_ref/w`` so that a *weighted* sum Σ w_i x_i carries σ·C·w_ref·√(m/n)
  whatever the public weights, and clamps it to :func:`noise_range` (the encoder's bound; see
  :func:`clamp_probability`).
* Masking / integer sums: :func:`discrete_gaussian_share` — integers ~ N_Z(0, s²), s = σ·C·scale/√n in grid
  units (``scale`` = quantisation levels per unit, e.g. ``secagg.encoding.FixedPoint.scale``). Requires s >= 4,
  so the sum of m shares is within τ < 1e-60 of N_Z(0, m·s²) (Kairouz, Liu & Steinke 2021, Thm 1).
  Quantisation can grow the update's norm: pass :func:`quantization_inflation` to the accountant.

Shares must be added by each client BEFORE encoding/encryption/masking (float shares to the clipped update,
integer shares to the quantised vector, mod 2^k), so the aggregator never holds an un-noised sum. Leave room
in the codec's range for the noise (e.g. clip range >= C + 8·share std).
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.errors import ConfigurationError

__all__ = [
    "noise_range",
    "weighted_share",
    "clamp_probability",
    "CSPRNG",
    "gaussian",
    "DiscreteGaussian",
    "discrete_gaussian",
    "share_std",
    "gaussian_share",
    "discrete_share_sigma",
    "discrete_gaussian_share",
    "quantization_inflation",
]

_DEN_LIMIT = 1 << 52  # every Bernoulli denominator stays below this; numerators below 2^64


class CSPRNG:
    """AES-256-CTR keystream as a random source. ``key=None`` (the default) draws a fresh key from os.urandom;
    an explicit 32-byte key makes the stream reproducible (tests only — never for real noise)."""

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(32) if key is None else bytes(key)
        if len(key) != 32:
            raise ConfigurationError("CSPRNG key must be 32 bytes")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros, self._out = b"", bytearray()

    def _keystream(self, n: int) -> np.ndarray:
        """The next ``n`` keystream bytes as a uint8 view of a reused buffer (valid until the next call)."""
        if len(self._zeros) < n:
            self._zeros, self._out = bytes(n), bytearray(n + 15)  # update_into wants block_size - 1 spare bytes
        self._enc.update_into(memoryview(self._zeros)[:n], self._out)
        return np.frombuffer(self._out, dtype=np.uint8, count=n)

    def random_bytes(self, n: int) -> bytes:
        return self._keystream(n).tobytes()

    def uint64(self, n: int) -> np.ndarray:
        return self._keystream(8 * n).view("<u8").astype(np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """n uniforms on the 2⁻⁵³ grid of [0, 1)."""
        out = (self._keystream(8 * n).view("<u8") >> np.uint64(11)).astype(np.float64)
        out *= 2.0**-53
        return out

    def below(self, bound: int, n: int) -> np.ndarray:
        """n independent uniform integers in [0, bound), 1 <= bound <= 2^63, by rejection (exact)."""
        if not 1 <= bound <= 1 << 63:
            raise ConfigurationError(f"bound {bound} out of range")
        mask = np.uint64((1 << max(1, (bound - 1).bit_length())) - 1)
        out = np.empty(n, dtype=np.uint64)
        filled = 0
        while filled < n:
            words = self.uint64(max(16, 2 * (n - filled))) & mask
            words = words[words < np.uint64(bound)][: n - filled]
            out[filled:filled + words.size] = words
            filled += words.size
        return out


_PAIRS = 4096  # uniform pairs per block of the Gaussian sampler: temporaries stay small, heap-reused, in cache


def gaussian(size: int, std: float, *, rng: CSPRNG | None = None) -> np.ndarray:
    """``size`` iid N(0, std²) float64 samples: Marsaglia's polar method on CSPRNG uniforms (a pair (v1, v2)
    uniform in the unit disc gives two independent normals v·sqrt(-2 ln s / s), s = v1² + v2²), in blocks."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigurationError(f"size must be an integer >= 0, got {size!r}")
    if not (math.isfinite(std) and std >= 0):
        raise ConfigurationError(f"std must be finite and >= 0, got {std!r}")
    rng = rng or CSPRNG()
    out = np.empty(size)
    filled = 0
    while filled < size:
        v = rng.uniform(2 * _PAIRS)
        v *= 2.0
        v -= 1.0  # [-1, 1) on the 2⁻⁵² grid
        s = v[:_PAIRS] * v[:_PAIRS]
        s += v[_PAIRS:] * v[_PAIRS:]
        inside = np.flatnonzero((s > 0.0) & (s < 1.0))
        s = s[inside]
        factor = np.sqrt(np.log(s) * -2.0 / s)
        for half in (v[:_PAIRS], v[_PAIRS:]):  # the first values needed are kept: a count, never a value test
            z = half[inside]
            z *= factor
            take = min(z.size, size - filled)
            out[filled:filled + take] = z[:take]
            filled += take
    out *= std
    return out


# -- exact Bernoulli and discrete Laplace/Gaussian samplers (Canonne, Kamath & Steinke 2020) -------------------
def _bernoulli(num: np.ndarray, den: int, rng: CSPRNG) -> np.ndarray:
    """Bernoulli(num/den) per entry, num in [0, den] (uint64), exactly."""
    return rng.below(den, num.size) < num


def _bernoulli_exp_frac(num: np.ndarray, den: int, rng: CSPRNG) -> np.ndarray:
    """Bernoulli(exp(-num/den)) per entry for num/den in [0, 1]: K <- first k with Bern(γ/k) = 0; K odd -> 1."""
    result = np.empty(num.size, dtype=bool)
    active = np.arange(num.size)
    k = 1
    while active.size:
        go_on = _bernoulli(num[active], den, rng) & (rng.below(k, active.size) == 0)  # Bern(γ/k) = Bern(γ)Bern(1/k)
        result[active[~go_on]] = k % 2 == 1
        active = active[go_on]
        k += 1
    return result


def _bernoulli_exp(num: np.ndarray, den: int, rng: CSPRNG) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for any num >= 0: floor(γ) Bern(e⁻¹) trials and one Bern(exp(-frac(γ)))."""
    whole, frac = num // np.uint64(den), num % np.uint64(den)
    result = _bernoulli_exp_frac(frac, den, rng)
    alive = np.flatnonzero(result & (whole > 0))
    left = whole[alive]
    ones = np.ones(num.size, dtype=np.uint64)
    while alive.size:
        ok = _bernoulli_exp_frac(ones[: alive.size], 1, rng)
        result[alive[~ok]] = False
        left = left[ok] - np.uint64(1)
        alive = alive[ok]
        alive, left = alive[left > 0], left[left > 0]
    return result


def _discrete_laplace(t: int, n: int, rng: CSPRNG) -> np.ndarray:
    """At most n samples of the discrete Laplace P(y) ∝ exp(-|y|/t) (CKS Alg. 2; rejected proposals dropped)."""
    u = rng.below(t, n)
    keep = _bernoulli_exp_frac(u, t, rng)
    u = u[keep]
    v = np.zeros(u.size, dtype=np.uint64)
    active = np.arange(u.size)
    ones = np.ones(u.size, dtype=np.uint64)
    while active.size:  # V ~ Geometric: count successes of Bern(e⁻¹)
        ok = _bernoulli_exp_frac(ones[: active.size], 1, rng)
        v[active[ok]] += np.uint64(1)
        active = active[ok]
    x = (u + np.uint64(t) * v).astype(np.int64)
    negative = rng.below(2, x.size) == 1
    valid = ~(negative & (x == 0))
    return np.where(negative, -x, x)[valid]


class DiscreteGaussian:
    """Exact sampler for N_Z(0, σ²): P(x) ∝ exp(-x²/(2σ²)) on the integers, σ² = ``variance_param`` >= requested."""

    def __init__(self, sigma: float) -> None:
        if not (math.isfinite(sigma) and 0 < sigma <= 4.5e7):
            raise ConfigurationError(f"discrete Gaussian sigma must be in (0, 4.5e7], got {sigma!r}")
        self.t = math.floor(sigma) + 1
        b = 1 << 20
        while b > 1 and 2 * math.ceil(sigma * sigma * b) * b * self.t * self.t > _DEN_LIMIT:
            b >>= 1
        a = math.ceil(sigma * sigma * b)
        if 2 * a * b * self.t * self.t <= _DEN_LIMIT:  # γ = (|y|·b·t - a)² / (2·a·b·t²), σ² = a/b
            self._m1, self._m0, self._den = b * self.t, a, 2 * a * b * self.t * self.t
            self.variance_param = a / b
        else:  # σ² = t·u: γ = (|y| - u)² / (2·t·u)
            u = math.ceil(sigma * sigma / self.t)
            self._m1, self._m0, self._den = 1, u, 2 * self.t * u
            self.variance_param = float(self.t * u)
        if self._den > _DEN_LIMIT:
            raise ConfigurationError(f"discrete Gaussian sigma {sigma} too large for exact sampling")

    def sample(self, size: int, *, rng: CSPRNG | None = None) -> np.ndarray:
        """``size`` iid samples as int64."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigurationError(f"size must be an integer >= 0, got {size!r}")
        rng = rng or CSPRNG()
        out = np.empty(size, dtype=np.int64)
        filled = 0
        while filled < size:
            y = _discrete_laplace(self.t, max(64, int(2.2 * (size - filled))), rng)
            c = np.abs(y).astype(np.uint64) * np.uint64(self._m1)
            c = np.where(c >= np.uint64(self._m0), c - np.uint64(self._m0), np.uint64(self._m0) - c)
            small = c < np.uint64(1 << 32)  # else γ >= 2^64/2^52: acceptance < exp(-4096), reject
            accept = np.zeros(y.size, dtype=bool)
            accept[small] = _bernoulli_exp(c[small] * c[small], self._den, rng)
            y = y[accept][: size - filled]
            out[filled:filled + y.size] = y
            filled += y.size
        return out


def discrete_gaussian(size: int, sigma: float, *, rng: CSPRNG | None = None) -> np.ndarray:
    """``size`` iid exact N_Z(0, σ²) samples (σ² rounded up as documented) as int64."""
    return DiscreteGaussian(sigma).sample(size, rng=rng)


# -- distributed DP shares ---------------------------------------------------------------------------------------
def share_std(noise_multiplier: float, clip_norm: float, n_clients: int) -> float:
    """Std of one client's Gaussian share, σC/√n: n shares sum to the central std σC."""
    for name, v in (("noise_multiplier", noise_multiplier), ("clip_norm", clip_norm)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ConfigurationError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ConfigurationError(f"n_clients must be an integer >= 1, got {n_clients!r}")
    return noise_multiplier * clip_norm / math.sqrt(n_clients)


def gaussian_share(dim: int, *, noise_multiplier: float, clip_norm: float, n_clients: int,
                   rng: CSPRNG | None = None) -> np.ndarray:
    """One client's float64 noise share N(0, (σC)²/n)^dim, to add to its clipped update before encryption."""
    return gaussian(dim, share_std(noise_multiplier, clip_norm, n_clients), rng=rng)


def noise_range(clip_norm: float, *, noise_multiplier: float, n_clients: int, tail: float = 9.0) -> float:
    """``C·(1 + tail·z/√n)``: the L∞ range that a clipped update plus its share stays in except with probability
    below ``dim·2Φ(−tail)`` (< 1e-12 for dim <= 1e6 at the default tail): the public value bound to encode against."""
    return clip_norm + tail * share_std(noise_multiplier, clip_norm, n_clients)


def weighted_share(x: np.ndarray, weight: float, *, clip_norm: float, noise_multiplier: float, n_clients: int,
                   reference_weight: float, tail: float = 9.0, rng: CSPRNG | None = None) -> np.ndarray:
    """A clipped update ``x`` (L2 <= C) plus this client's share of the distributed noise, scaled by
    ``reference_weight / weight``, so that the weighted sum Σ w_i x_i the rules compute carries exactly
    N(0, (z·C·w_ref)²·m/n) whatever the public weights ``w_i <= w_ref`` are (m of the n shares survive).
    Clamped to ``±noise_range(...)·w_ref/w`` (so ``|w·x| <= noise_range·w_ref``, the encoder's bound): the
    clamp binds with probability below ``dim·2Φ(−tail)``, which the central δ accounts for."""
    if not (math.isfinite(weight) and 0 < weight <= reference_weight and math.isfinite(reference_weight)):
        raise ConfigurationError(f"weight {weight!r} must be in (0, reference_weight={reference_weight!r}]")
    factor = reference_weight / weight
    noisy = x + factor * gaussian_share(x.size, noise_multiplier=noise_multiplier, clip_norm=clip_norm,
                                        n_clients=n_clients, rng=rng)
    bound = factor * noise_range(clip_norm, noise_multiplier=noise_multiplier, n_clients=n_clients, tail=tail)
    return np.clip(noisy, -bound, bound)


def clamp_probability(dim: int, tail: float = 9.0) -> float:
    """Chance that the clamp of :func:`weighted_share` binds for one client and round (a union bound)."""
    return min(1.0, dim * 2.0 * _normal_sf(tail))


def _normal_sf(t: float) -> float:
    return 0.5 * math.erfc(t / math.sqrt(2.0))


def discrete_share_sigma(*, noise_multiplier: float, clip_norm: float, n_clients: int, scale: float) -> float:
    """Per-client discrete Gaussian scale s = σ·C·scale/√n in grid units; refuses s < 4 (see module docs)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigurationError(f"scale must be a finite number > 0, got {scale!r}")
    s = share_std(noise_multiplier, clip_norm, n_clients) * scale
    if s < 4.0:
        raise ConfigurationError(f"per-client discrete noise scale {s:.3g} < 4 grid steps; use a finer grid")
    return s


def discrete_gaussian_share(dim: int, *, noise_multiplier: float, clip_norm: float, n_clients: int, scale: float,
                            rng: CSPRNG | None = None) -> np.ndarray:
    """One client's int64 share ~ N_Z(0, s²)^dim, s = σ·C·scale/√n; add it to the quantised update mod 2^k."""
    s = discrete_share_sigma(noise_multiplier=noise_multiplier, clip_norm=clip_norm, n_clients=n_clients,
                             scale=scale)
    return discrete_gaussian(dim, s, rng=rng)


def quantization_inflation(*, clip_norm: float, scale: float, dim: int) -> float:
    """Factor by which rounding to the 1/scale grid can grow the L2 sensitivity: (C·scale + √dim)/(C·scale).

    Stochastic or deterministic rounding moves each coordinate by < 1 grid step, hence by < √dim in L2.
    """
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(clip_norm) and clip_norm > 0 and dim >= 1):
        raise ConfigurationError("clip_norm and scale must be positive and finite, dim >= 1")
    return (clip_norm * scale + math.sqrt(dim)) / (clip_norm * scale)
