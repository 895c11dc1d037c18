"""CSPRNG noise: distributed shares sum to the intended variance; the discrete Gaussian sampler is exact.

Variance checks use a fixed sample size and an acceptance interval derived from it: the chi-square interval
for Gaussians (Σx²/σ² ~ χ²(N)), a CLT interval with the exact fourth moment for discrete samples. The
false-failure probability of every statistical check is <= 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy.stats import chi2, kstest

from privacy.errors import ConfigurationError
from privacy.noise import (CSPRNG, DiscreteGaussian, _bernoulli_exp, discrete_gaussian_share, discrete_share_sigma,
                           gaussian, gaussian_share, quantization_inflation)

ALPHA = 1e-6
Z = 4.9  # two-sided normal quantile for ALPHA


def _assert_gaussian_variance(x: np.ndarray, var: float) -> None:
    n = x.size
    stat = float(np.sum(x * x)) / var
    assert chi2.ppf(ALPHA / 2, n) <= stat <= chi2.ppf(1 - ALPHA / 2, n), (stat / n)


def _pmf(variance_param: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(-width, width + 1)
    w = np.exp(-(k.astype(float) ** 2) / (2 * variance_param))
    return k, w / w.sum()


def _assert_discrete_variance(x: np.ndarray, variance_param: float) -> None:
    width = int(12 * math.sqrt(variance_param)) + 10
    k, p = _pmf(variance_param, width)
    m2, m4 = float(np.sum(p * k**2)), float(np.sum(p * k.astype(float) ** 4))
    se = math.sqrt((m4 - m2 * m2) / x.size)
    assert abs(float(np.mean(x.astype(float) ** 2)) - m2) <= Z * se


def test_gaussian_variance_and_mean():
    x = gaussian(200_001, 2.5)
    assert x.shape == (200_001,)
    _assert_gaussian_variance(x, 2.5**2)
    assert abs(x.mean()) <= Z * 2.5 / math.sqrt(x.size)


@pytest.mark.parametrize("size", [1, 4095, 8199, 60_013])
def test_gaussian_has_the_normal_distribution_across_sampler_blocks(size):
    """Polar-method blocks (4096 pairs) are stitched by count: exact size, no repeated draw, and the normal law
    (Kolmogorov-Smirnov on a fixed key, so the check is deterministic), also between the two halves of a pair."""
    x = gaussian(size, 1.0, rng=CSPRNG(bytes(range(32))))
    assert x.shape == (size,) and np.unique(x).size == size
    if size > 1000:
        assert kstest(x, "norm").pvalue > ALPHA
        assert abs(float(np.corrcoef(x[:-1], x[1:])[0, 1])) <= Z / math.sqrt(size)
        assert abs(float(np.mean(x**4)) - 3.0) <= Z * math.sqrt(96.0 / size)  # 4th moment 3, variance 96


@pytest.mark.parametrize("n,survivors", [(7, 7), (7, 4), (1, 1)])
def test_sum_of_gaussian_shares_has_central_variance(n, survivors):
    sigma, clip, dim = 1.3, 0.7, 40_000
    total = sum(gaussian_share(dim, noise_multiplier=sigma, clip_norm=clip, n_clients=n) for _ in range(survivors))
    _assert_gaussian_variance(total, (sigma * clip) ** 2 * survivors / n)


def test_sum_of_discrete_shares_has_central_variance():
    n, sigma, clip, scale, dim = 5, 1.0, 1.0, 40.0, 30_000
    s = discrete_share_sigma(noise_multiplier=sigma, clip_norm=clip, n_clients=n, scale=scale)
    assert s == pytest.approx(sigma * clip * scale / math.sqrt(n))
    shares = [discrete_gaussian_share(dim, noise_multiplier=sigma, clip_norm=clip, n_clients=n, scale=scale)
              for _ in range(n)]
    assert all(sh.dtype == np.int64 and sh.shape == (dim,) for sh in shares)
    total = np.sum(shares, axis=0)
    var_param = DiscreteGaussian(s).variance_param
    assert var_param >= s * s and var_param / (s * s) - 1 < 2**-20
    # for s >= 4 the discrete variance equals var_param to ~1e-60, and shares are independent
    _assert_gaussian_variance(total.astype(float), n * var_param)


@pytest.mark.parametrize("sigma", [0.6, 1.5, 3.3, 20.0, 9000.0])
def test_discrete_gaussian_second_moment_matches_exact_pmf(sigma):
    dg = DiscreteGaussian(sigma)
    x = dg.sample(60_000)
    assert x.dtype == np.int64
    _assert_discrete_variance(x, dg.variance_param)
    assert abs(x.mean()) <= Z * math.sqrt(dg.variance_param / x.size) + 1e-9


def test_discrete_gaussian_pmf_goodness_of_fit():
    dg = DiscreteGaussian(1.5)
    x = dg.sample(80_000)
    k, p = _pmf(dg.variance_param, 30)
    inner = np.abs(k) <= 5
    observed = np.array([np.sum(x == v) for v in k[inner]] + [np.sum(np.abs(x) > 5)])
    expected = np.append(p[inner], p[~inner].sum()) * x.size
    stat = float(np.sum((observed - expected) ** 2 / expected))
    assert stat <= chi2.ppf(1 - ALPHA, observed.size - 1)


@pytest.mark.parametrize("num,den", [(3, 10), (1, 1), (27, 10), (0, 5)])
def test_exact_bernoulli_exp_frequency(num, den):
    n = 40_000
    hits = int(_bernoulli_exp(np.full(n, num, dtype=np.uint64), den, CSPRNG()).sum())
    p = math.exp(-num / den)
    assert abs(hits - n * p) <= Z * math.sqrt(n * p * (1 - p)) + 1e-9


def test_csprng_is_aes_ctr_and_fresh_by_default():
    key = bytes(range(32))
    stream = CSPRNG(key).random_bytes(48)
    assert stream == CSPRNG(key).random_bytes(48)  # explicit key: reproducible
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(i.to_bytes(16, "big") for i in range(3))
    assert stream == ecb.update(blocks) + ecb.finalize()  # CTR keystream = E_k(counter) blocks
    assert CSPRNG().random_bytes(32) != CSPRNG().random_bytes(32)  # os.urandom keys


def test_csprng_below_is_uniform():
    x = CSPRNG().below(7, 70_000)
    assert x.max() < 7
    counts = np.bincount(x.astype(np.int64), minlength=7)
    stat = float(np.sum((counts - 10_000) ** 2 / 10_000))
    assert stat <= chi2.ppf(1 - ALPHA, 6)


def test_bad_noise_parameters_raise():
    with pytest.raises(ConfigurationError):
        gaussian(-1, 1.0)
    with pytest.raises(ConfigurationError):
        gaussian(10, float("nan"))
    with pytest.raises(ConfigurationError):
        gaussian_share(10, noise_multiplier=0.0, clip_norm=1.0, n_clients=3)
    with pytest.raises(ConfigurationError):
        gaussian_share(10, noise_multiplier=1.0, clip_norm=1.0, n_clients=0)
    with pytest.raises(ConfigurationError):  # 3.2 grid steps per client: sum not provably discrete Gaussian
        discrete_share_sigma(noise_multiplier=1.0, clip_norm=1.0, n_clients=100, scale=32.0)
    with pytest.raises(ConfigurationError):
        DiscreteGaussian(1e9)
    with pytest.raises(ConfigurationError):
        CSPRNG(b"short")


def test_quantization_inflation():
    assert quantization_inflation(clip_norm=1.0, scale=100.0, dim=400) == pytest.approx(1.2)
    with pytest.raises(ConfigurationError):
        quantization_inflation(clip_norm=1.0, scale=0.0, dim=4)
