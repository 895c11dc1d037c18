"""Accountants against Google's dp_accounting (independent implementation) and against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import comb, logsumexp
from scipy.stats import norm

from privacy.accounting import (central_noise_multiplier, distributed_epsilon, epsilon, epsilon_of_events,
                                noise_multiplier_for_epsilon)
from privacy.errors import ConfigurationError
from privacy.events import PrivacyEvent
from privacy.prv import prv_epsilon_bounds
from privacy import rdp
from privacy.rdp import _log_a_integral, rdp_subsampled_gaussian

DELTA = 1e-5
# (q, σ, T): small and large q, q = 1 (no subsampling), long and short runs
SETTINGS = [(0.01, 1.0, 1000), (0.001, 0.8, 10000), (1.0, 2.0, 10), (1.0, 1.0, 1), (0.1, 3.0, 100), (0.05, 0.6, 50)]


def _google(accountant, q: float, sigma: float, steps: int, delta: float = DELTA) -> float:
    acc = accountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("q,sigma,steps", SETTINGS)
def test_prv_matches_dp_accounting_pld_within_1pct(q, sigma, steps):
    ours = epsilon(sigma, q, steps, DELTA, accountant="prv")
    ref = _google(PLDAccountant, q, sigma, steps)
    assert abs(ours / ref - 1) < 0.01, (ours, ref)


@pytest.mark.parametrize("q,sigma,steps", SETTINGS)
def test_rdp_matches_dp_accounting_rdp_within_1pct(q, sigma, steps):
    ours = epsilon(sigma, q, steps, DELTA, accountant="rdp")
    ref = _google(RdpAccountant, q, sigma, steps)
    assert abs(ours / ref - 1) < 0.01, (ours, ref)


def test_gaussian_mechanism_exact_curve():
    # q = 1, one step: δ(ε) = Φ(-εσ + 1/(2σ)) - e^ε Φ(-εσ - 1/(2σ)) (Balle & Wang 2018); invert numerically
    sigma = 1.3
    b = prv_epsilon_bounds([PrivacyEvent(sigma, 1.0, 1)], DELTA)
    exact_delta = lambda e: norm.cdf(-e * sigma + 1 / (2 * sigma)) - math.exp(e) * norm.cdf(-e * sigma - 1 / (2 * sigma))
    assert exact_delta(b.upper) <= DELTA <= exact_delta(b.lower)
    assert b.upper - b.lower < 0.03


@pytest.mark.parametrize("q,sigma", [(0.02, 0.9), (0.3, 2.0), (0.001, 5.0)])
def test_rdp_integral_matches_binomial_closed_form(q, sigma):
    for a in [2, 3, 8, 32, 100]:  # the integral (used for fractional orders) against the exact binomial sum
        k = np.arange(a + 1)
        terms = np.log(comb(a, k)) + (a - k) * np.log1p(-q) + k * np.log(q) + (k * k - k) / (2 * sigma**2)
        assert _log_a_integral(q, sigma, float(a)) == pytest.approx(logsumexp(terms), rel=1e-9, abs=1e-15)
        assert rdp_subsampled_gaussian(q, sigma, [float(a)])[0] == pytest.approx(logsumexp(terms) / (a - 1),
                                                                                  rel=1e-9, abs=1e-15)


def test_tiny_noise_falls_back_to_a_conservative_convexity_bound(monkeypatch):
    exact = rdp_subsampled_gaussian(0.05, 0.4, [1.5, 2.5, 7.3])
    monkeypatch.setattr(rdp, "_MAX_GRID", 1)  # force the fallback where the integral is still available
    bound = rdp_subsampled_gaussian(0.05, 0.4, [1.5, 2.5, 7.3])
    assert (bound >= exact).all() and bound[2] <= exact[2] * 1.01  # valid, and tight at larger orders
    tiny = rdp_subsampled_gaussian(0.01, 0.02, [1.5, 2.0])  # would need ~1e9 integration points
    assert tiny[0] == pytest.approx(tiny[1])  # RDP(1.5) <= log A_2 / 1 = RDP(2)


def test_prv_bounds_bracket_and_error_is_documented():
    b = prv_epsilon_bounds([PrivacyEvent(1.0, 0.02, 500)], DELTA)
    assert b.lower <= b.estimate <= b.upper
    assert b.upper - b.estimate <= b.eps_error + 1e-3  # upper = ε_Ỹ(δ - δ_err) + ε_err
    assert 0 < b.delta_error < DELTA / 100


@settings(max_examples=8, deadline=None)
@given(sigma=st.floats(0.7, 4.0), q=st.floats(0.005, 0.5), steps=st.integers(1, 300))
def test_epsilon_monotone_in_noise_and_steps(sigma, q, steps):
    e = epsilon(sigma, q, steps, DELTA, accountant="rdp")
    assert epsilon(sigma * 1.2, q, steps, DELTA, accountant="rdp") <= e
    assert epsilon(sigma, q, steps + 10, DELTA, accountant="rdp") >= e


def test_noise_for_target_epsilon_is_tight():
    q, steps, target = 0.02, 300, 2.0
    sigma = noise_multiplier_for_epsilon(target, q, steps, DELTA)
    assert epsilon(sigma, q, steps, DELTA) <= target
    assert epsilon(sigma / 1.02, q, steps, DELTA) > target * 0.97  # within the 1% σ tolerance (ε moves less)


@pytest.mark.parametrize("bad", [dict(noise_multiplier=0.0), dict(noise_multiplier=float("nan")),
                                 dict(sample_rate=0.0), dict(sample_rate=1.5), dict(steps=-1), dict(steps=2.5)])
def test_invalid_event_parameters_raise(bad):
    args = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10) | bad
    with pytest.raises(ConfigurationError):
        PrivacyEvent(**args)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_no_steps_spend_nothing(accountant):
    assert epsilon(1.0, 0.1, 0, DELTA, accountant=accountant) == 0.0
    assert epsilon_of_events([], DELTA, accountant=accountant) == 0.0


def test_invalid_delta_and_accountant_raise():
    with pytest.raises(ConfigurationError):
        epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(ConfigurationError):
        epsilon(1.0, 0.1, 10, 1e-5, accountant="gdp")


def test_distributed_noise_central_guarantee_and_dropouts():
    sigma, n = 1.0, 10
    full = distributed_epsilon(sigma, 1.0, DELTA, n_clients=n, survivors=n, rounds=20, accountant="rdp")
    assert full == pytest.approx(epsilon(sigma, 1.0, 20, DELTA, accountant="rdp"))
    # 6 survivors of 10: effective σ·√(6/10)
    dropped = distributed_epsilon(sigma, 1.0, DELTA, n_clients=n, survivors=6, rounds=20, accountant="rdp")
    assert dropped == pytest.approx(epsilon(sigma * math.sqrt(0.6), 1.0, 20, DELTA, accountant="rdp"))
    assert dropped > full
    mixed = distributed_epsilon(sigma, 1.0, DELTA, n_clients=n, survivors=[10] * 10 + [6] * 10, accountant="rdp")
    assert full < mixed < dropped
    assert central_noise_multiplier(2.0, n_clients=4, survivors=1) == pytest.approx(1.0)
    assert central_noise_multiplier(2.0, n_clients=4, survivors=4, sensitivity_inflation=2.0) == pytest.approx(1.0)
    with pytest.raises(ConfigurationError):
        central_noise_multiplier(1.0, n_clients=4, survivors=5)


def test_heterogeneous_events_match_dp_accounting():
    events = [PrivacyEvent(1.0, 0.01, 300), PrivacyEvent(0.8, 0.05, 40), PrivacyEvent(1.5, 0.02, 200)]
    acc = PLDAccountant()
    for e in events:
        acc.compose(dp_event.PoissonSampledDpEvent(e.sample_rate, dp_event.GaussianDpEvent(e.noise_multiplier)),
                    e.steps)
    ours = epsilon_of_events(events, DELTA)
    assert abs(ours / acc.get_epsilon(DELTA) - 1) < 0.01
