"""The distributed discrete Gaussian of masking rounds (issue 24, item 6): what a client adds is integer noise of
the scale the accounting assumes, on the round's own grid, and the ρ of the sum covers the rounding.

Checked against independent computations: the noise's second moment against the exact discrete-Gaussian
variance (chi-square band), the ρ against the continuous Gaussian's n/(2hz²) inflated by the rounding's √d, and
an end-to-end masking round whose released sum carries the honest noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from privacy.discrete import MIN_UNIT, SAMPLER_MAX, discrete_levels, grid_step, sum_rho
from privacy.errors import ConfigurationError, InvalidUpdateError
from privacy.noise import DiscreteGaussian
from secagg.errors import ConfigurationError as SecAggConfigurationError, MalformedUpdateError
from training.engine.contribution import IntegerNoise, NoisyMaskingClient
from training.engine.roles import make_scheme


def _levels(x, w=1.0, *, scale=2.0 ** 20, max_level=2 ** 30, z=1.0, n=4, ref=1.0):
    return discrete_levels(x, w, scale=scale, max_level=max_level, clip_norm=1.0, noise_multiplier=z,
                           n_clients=n, reference_weight=ref)


@pytest.mark.parametrize("scale,z", [(2.0 ** 20, 1.0), (2.0 ** 40, 0.5)])  # g = 1, and a coarse step g > 1
def test_the_noise_added_is_a_discrete_gaussian_of_the_assumed_scale(scale, z):
    dim, n, ref, w = 40_000, 4, 2.0, 0.5
    x = np.zeros(dim)
    s = z * 1.0 * ref * scale / math.sqrt(n)  # the share's std in grid levels
    g = grid_step(s)
    assert (g == 1) == (s <= SAMPLER_MAX) and s / g <= SAMPLER_MAX
    noise = _levels(x, w, scale=scale, max_level=2 ** 62, z=z, n=n, ref=ref)
    assert noise.dtype == np.int64 and np.all(noise % g == 0)
    var = DiscreteGaussian(s / g).variance_param * g * g  # the exact sampler's variance (σ² rounded up)
    stat = float(np.sum(noise.astype(np.float64) ** 2)) / var
    assert chi2.ppf(1e-6, dim) <= stat <= chi2.ppf(1 - 1e-6, dim)
    assert abs(var / s ** 2 - 1) < 1e-6


def test_the_update_is_rounded_unbiased_and_moves_less_than_one_step():
    x = np.linspace(-1, 1, 4096) * 0.3 / 37  # L2 norm < 0.3, fractional levels everywhere
    y = x * 2.0 ** 20
    lv = _levels(x, z=1e-7)  # a share of 0.05 levels: N_Z(0, 0.05²) is 0 but for ~e^-200
    assert np.all(np.abs(lv - y) < 1)
    assert abs(float(np.mean(lv - y))) < 3 * 0.5 / math.sqrt(4096)  # unbiased (each error has |e| < 1)


def test_the_clamp_keeps_every_level_within_the_grid():
    x = np.full(100, 0.1)  # L2 norm 1.0
    out = _levels(x, scale=2.0 ** 20, max_level=2 ** 17, z=1.0)
    assert np.abs(out).max() <= 2 ** 17


def test_refusals_are_named():
    x = np.zeros(8)
    with pytest.raises(ConfigurationError, match="reference_weight"):
        _levels(x, 3.0, ref=2.0)  # the server lowered max_weight below this client's weight
    with pytest.raises(ConfigurationError, match="levels per clipped update"):
        _levels(x, scale=MIN_UNIT / 2)  # a grid too coarse for what the accounting assumes
    with pytest.raises(InvalidUpdateError, match="clip"):
        _levels(np.ones(8))
    with pytest.raises(InvalidUpdateError, match="finite"):
        _levels(np.array([np.nan, 0.0]))


@settings(max_examples=40, deadline=None)
@given(z=st.floats(0.3, 5.0), n=st.integers(2, 200), dim=st.integers(1, 10 ** 7), data=st.data())
def test_rho_is_the_gaussians_inflated_by_the_rounding_and_grows_with_colluders(z, n, dim, data):
    h = data.draw(st.integers(1, n))
    rho = sum_rho(z, n_clients=n, honest=h, dim=dim)
    gauss = n / (2 * h * z * z)  # the continuous Gaussian sum of h honest shares of std z/√n (unit sensitivity)
    inflation = max(math.sqrt(dim) / MIN_UNIT, 2 * z * math.sqrt(dim) / (math.sqrt(n) * SAMPLER_MAX))
    assert gauss <= rho <= gauss * (1 + inflation) ** 2 * (1 + 1e-9) + 1e-12
    if h > 1:
        assert sum_rho(z, n_clients=n, honest=h - 1, dim=dim) > rho  # one more colluder costs ρ
    assert sum_rho(z, n_clients=n, honest=0, dim=dim) == math.inf


def _masking_round(noise: IntegerNoise | None, xs, weights, max_weight: float):
    ids = sorted(xs)
    dim = len(xs[ids[0]])
    scheme = make_scheme("masking", {"clip": 10.0, "signed": False})
    params, server = scheme.plan(1, ids, weights, dim, None, terms={"max_weight": max_weight})
    roles = {c: scheme.client_role(c, params, None, noise=noise) for c in ids}
    inbox = [o for c in ids for o in [(c, m) for m in roles[c].start(xs[c], weights[c])]]
    while not server.done:
        outs = [o for c, m in inbox for o in server.receive(c, m.payload)]
        inbox = [(o.to, m) for o in outs for m in roles[o.to].receive(o.payload)]
    return server.result(), roles


def test_a_masking_round_releases_the_sum_plus_the_honest_discrete_noise():
    dim, z, ids = 30_000, 1.0, [0, 1, 2]
    weights = {0: 1.0, 1: 2.0, 2: 4.0}
    rng = np.random.default_rng(3)
    xs = {c: rng.normal(size=dim) / math.sqrt(dim) * 0.9 for c in ids}
    noise = IntegerNoise(z, 1.0, 3)
    res, roles = _masking_round(noise, xs, weights, max_weight=4.0)
    assert all(isinstance(r, NoisyMaskingClient) for r in roles.values())
    total = sum(weights[c] * xs[c] for c in ids)
    assert res.total_weight == pytest.approx(sum(weights.values()), abs=1e-6)
    residual = res.weighted_sum - total
    expect = z * 1.0 * 4.0  # three shares of z·C·w_ref/√3: the sum's noise std
    stat = float(np.sum(residual ** 2)) / expect ** 2
    assert chi2.ppf(1e-6, dim) * 0.99 <= stat <= chi2.ppf(1 - 1e-6, dim) * 1.01
    plain, _ = _masking_round(None, xs, weights, max_weight=4.0)  # without noise: the exact weighted mean
    assert np.max(np.abs(plain.weighted_sum - total)) < 1e-4


def test_a_cohort_below_the_configured_noise_shares_is_refused_by_the_role():
    with pytest.raises(SecAggConfigurationError, match="smaller than the 4 noise shares"):
        _masking_round(IntegerNoise(1.0, 1.0, 4), {c: np.zeros(4) for c in range(3)}, {c: 1.0 for c in range(3)},
                       max_weight=1.0)


def test_start_levels_refuses_levels_that_could_wrap_the_sum():
    scheme = make_scheme("masking", {"clip": 1.0, "signed": False})
    params, _ = scheme.plan(1, [0, 1], {0: 1.0, 1: 1.0}, 4, None)
    role = scheme.client_role(0, params, None)
    top = role.config.value_codec.max_level
    with pytest.raises(MalformedUpdateError, match="could wrap"):
        role.start_levels(np.array([top + 1, 0, 0, 0], dtype=np.int64), 1.0)
    with pytest.raises(MalformedUpdateError, match="int64"):
        role.start_levels(np.zeros(4), 1.0)
    assert role.start_levels(np.array([-top, top, 0, -1], dtype=np.int64), 1.0)  # the extremes are fine


def test_a_noisy_masking_role_survives_a_sealed_snapshot_between_messages():
    """Flower's ClientApp seals its role between messages: the wrapper and its noise settings come back."""
    import os

    from secagg.snapshot import seal, unseal

    scheme = make_scheme("masking", {"clip": 10.0, "signed": False})
    params, server = scheme.plan(1, [0, 1, 2], {c: 1.0 for c in range(3)}, 8, None, terms={"max_weight": 1.0})
    role = scheme.client_role(0, params, None, noise=IntegerNoise(1.0, 1.0, 3))
    role.start(np.zeros(8), 1.0)
    key = os.urandom(32)
    back = unseal(seal(role, key, b"run|client-0"), key, b"run|client-0", allow=("training.",))
    assert isinstance(back, NoisyMaskingClient) and back.noise == role.noise and back.stage == role.stage
