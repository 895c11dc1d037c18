"""The accounting adapter (ε by dp_accounting) against independent computations: the exact curve of the Gaussian
mechanism (Balle & Wang 2018), the integer-order RDP closed form, and Opacus's PRV accountant; plus the
invariants every accountant must keep (monotone in noise and steps, RDP above PLD, composition order-free)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant
from scipy.optimize import brentq
from scipy.special import comb, logsumexp
from scipy.stats import norm

from privacy.accounting import PLD_CAP, epsilon, epsilon_of_events, noise_multiplier_for_epsilon
from privacy.distributed import central_noise_multiplier, distributed_epsilon
from privacy.errors import ConfigurationError
from privacy.events import PrivacyEvent
from tests.independent import pld_epsilon

DELTA = 1e-5
# (q, σ, T): small and large q, q = 1 (no subsampling), long and short runs
SETTINGS = [(0.01, 1.0, 1000), (0.001, 0.8, 10000), (1.0, 2.0, 10), (1.0, 1.0, 1), (0.1, 3.0, 100), (0.05, 0.6, 50),
            (1 / 16, 0.8, 48)]


def _gaussian_exact_epsilon(mu_sigma: float, delta: float) -> float:
    """ε of the Gaussian mechanism with noise multiplier σ (sensitivity 1), q = 1, one release: solve
    δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ) = δ."""
    s = mu_sigma

    def gap(e: float) -> float:
        return norm.cdf(1 / (2 * s) - e * s) - math.exp(e) * norm.cdf(-1 / (2 * s) - e * s) - delta

    return brentq(gap, 0.0, 200.0, xtol=1e-12)


@pytest.mark.parametrize("sigma", [0.6, 1.3, 3.0, 8.0])
def test_pld_is_an_upper_bound_within_a_mesh_of_the_exact_gaussian_curve(sigma):
    exact = _gaussian_exact_epsilon(sigma, DELTA)
    ours = epsilon(sigma, 1.0, 1, DELTA, accountant="prv")
    assert exact - 1e-9 <= ours <= exact + 5e-3, (ours, exact)


@pytest.mark.parametrize("steps", [4, 25])
def test_composed_gaussian_releases_match_the_gaussian_curve_of_the_summed_noise(steps):
    # T releases at σ compose exactly to one release at σ/√T (μ-GDP composes in quadrature)
    sigma = 4.0
    exact = _gaussian_exact_epsilon(sigma / math.sqrt(steps), DELTA)
    assert exact - 1e-9 <= epsilon(sigma, 1.0, steps, DELTA) <= exact + 1e-2


@pytest.mark.parametrize("q,sigma,steps", SETTINGS)
def test_pld_matches_opacus_prv_within_2pct(q, sigma, steps):
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    ref = prv.get_epsilon(DELTA)
    ours = epsilon(sigma, q, steps, DELTA)
    assert abs(ours / ref - 1) < 0.02, (ours, ref)


@pytest.mark.parametrize("q,sigma,order", [(0.02, 0.9, 8), (0.3, 2.0, 3), (0.001, 5.0, 32)])
def test_rdp_epsilon_is_at_most_the_closed_form_bound_at_any_integer_order(q, sigma, order):
    """The RDP accountant minimises over orders; at each integer order α the binomial closed form of the
    subsampled Gaussian's RDP, converted with the same bound, can only be larger or equal."""
    k = np.arange(order + 1)
    terms = np.log(comb(order, k)) + (order - k) * np.log1p(-q) + k * np.log(q) + (k * k - k) / (2 * sigma**2)
    rdp = 100 * logsumexp(terms) / (order - 1)  # 100 steps
    eps_alpha = rdp + math.log((order - 1) / order) - (math.log(DELTA) + math.log(order)) / (order - 1)
    assert epsilon(sigma, q, 100, DELTA, accountant="rdp") <= eps_alpha + 1e-9


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.7, 4.0), q=st.floats(0.005, 0.5), steps=st.integers(1, 300),
       accountant=st.sampled_from(["prv", "rdp"]))
def test_epsilon_monotone_in_noise_and_steps(sigma, q, steps, accountant):
    e = epsilon(sigma, q, steps, DELTA, accountant=accountant)
    assert epsilon(sigma * 1.2, q, steps, DELTA, accountant=accountant) <= e + 1e-9
    assert epsilon(sigma, q, steps + 10, DELTA, accountant=accountant) >= e - 1e-9
    assert epsilon(sigma, q, steps, DELTA * 10, accountant=accountant) <= e + 1e-9


@settings(max_examples=15, deadline=None)
@given(sigma=st.floats(0.6, 3.0), q=st.floats(0.005, 1.0), steps=st.integers(1, 300))
def test_rdp_is_never_tighter_than_an_independent_pld_and_the_default_is_that_pld(sigma, q, steps):
    """Against dp_accounting's PLD run directly (each event on its own): the RDP bound and the default both lie
    above it (both are upper bounds), and the default equals it to the mesh's slack wherever the RDP bound is
    below PLD_CAP (beyond, the RDP bound is reported)."""
    ref = pld_epsilon([(sigma, q, steps)], DELTA)
    rdp = epsilon(sigma, q, steps, DELTA, accountant="rdp")
    ours = epsilon(sigma, q, steps, DELTA)
    assert rdp >= ref - 1e-3 and ours >= ref - 1e-3
    assert ours <= (ref * 1.01 + 2e-3 if rdp <= PLD_CAP else rdp)


def test_heterogeneous_composition_matches_opacus_prv_and_an_independent_pld():
    events = [PrivacyEvent(1.0, 0.01, 300), PrivacyEvent(0.8, 0.05, 40), PrivacyEvent(1.0, 0.01, 200)]
    a = epsilon_of_events(events, DELTA)
    prv = PRVAccountant()  # a second implementation, fed the history in its own order
    prv.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    assert abs(a / prv.get_epsilon(DELTA) - 1) < 0.02
    assert abs(a / pld_epsilon(events, DELTA) - 1) < 0.01
    assert epsilon(1.0, 0.01, 500, DELTA) < a  # adding the second kind of event costs ε


@pytest.mark.parametrize("q,sigma,steps", [(0.05, 1.0, 40), (1 / 3, 1.0, 4), (1.0, 2.0, 3)])
def test_replace_one_matches_an_independent_pld_and_exceeds_add_remove(q, sigma, steps):
    ours = epsilon(sigma, q, steps, DELTA, relation="replace-one")
    ref = pld_epsilon([(sigma, q, steps)], DELTA, relation="replace-one")
    assert ref - 1e-3 <= ours <= ref * 1.01 + 2e-3
    assert ours > epsilon(sigma, q, steps, DELTA) * 1.2  # one replaced record is a removal and an addition
    assert epsilon(sigma, q, steps, DELTA, accountant="rdp", relation="replace-one") >= ref - 1e-3


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
    full = distributed_epsilon(sigma, 1.0, DELTA, n_clients=n, survivors=n, rounds=20)
    assert full == pytest.approx(_gaussian_exact_epsilon(sigma / math.sqrt(20), DELTA), abs=1e-2)
    # 6 survivors of 10: the sum carries 6 shares of std σC/√10, so its noise multiplier is σ·√(6/10)
    dropped = distributed_epsilon(sigma, 1.0, DELTA, n_clients=n, survivors=6, rounds=20)
    assert dropped == pytest.approx(_gaussian_exact_epsilon(sigma * math.sqrt(0.6) / math.sqrt(20), DELTA), abs=1e-2)
    assert dropped > full
    mixed = distributed_epsilon(sigma, 1.0, DELTA, n_clients=n, survivors=[10] * 10 + [6] * 10)
    assert full < mixed < dropped
    assert central_noise_multiplier(2.0, n_clients=4, survivors=1) == pytest.approx(1.0)
    assert central_noise_multiplier(2.0, n_clients=4, survivors=4, sensitivity_inflation=2.0) == pytest.approx(1.0)
    with pytest.raises(ConfigurationError):
        central_noise_multiplier(1.0, n_clients=4, survivors=5)


@settings(max_examples=8, deadline=None)
@given(sigma=st.floats(0.3, 0.6), q=st.floats(0.003, 0.02), steps=st.integers(3, 30))
def test_replace_one_is_the_pld_even_where_its_group_privacy_rdp_bound_is_loose(sigma, q, steps):
    """Low σ and small q (the SmolLM2 job: σ = 0.37, q = 0.007, 9 steps): the replace-one RDP bound (group
    privacy over add/remove) is many times the PLD's ε; the default must still be the PLD, not that bound."""
    ref = pld_epsilon([(sigma, q, steps)], DELTA, relation="replace-one")
    ours = epsilon(sigma, q, steps, DELTA, relation="replace-one")
    assert ref - 1e-3 <= ours <= ref * 1.01 + 2e-3


def test_the_smollm2_eps8_point_reads_8_under_replace_one():
    assert epsilon(0.37258944379232556, 16 / 2200, 9, 1e-5, relation="replace-one") == pytest.approx(8.01, abs=0.02)
