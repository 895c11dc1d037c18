"""Distributed DP at the federation level: every client's noise share is scaled so the weighted sum the rules
compute carries N(0, (z·C·w_ref)²·m/n) whatever the public weights (checked by its variance), runs report the
client-level central ε of every released sum (checked against the exact Gaussian curve of the composed noise),
the loss-weighted rule (whose weight lane would go out unnoised) is refused, and the encoders' bound leaves room
for the shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import chi2, norm

from privacy.distributed import distributed_epsilon
from privacy.errors import ConfigurationError
from privacy.noise import noise_range, weighted_share
from training.engine.rules import FedAvg, LossWeighted
from training.errors import ConfigError
from training.inprocess.federation import Federation
from training.inprocess.simulation import Runner
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate
from tests.test_training_runner import _tiny


def _exact_epsilon(sigma: float, delta: float) -> float:
    return brentq(lambda e: norm.cdf(1 / (2 * sigma) - e * sigma) - math.exp(e) * norm.cdf(-1 / (2 * sigma) - e * sigma)
                  - delta, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("scheme,drop", [("ckks", ()), ("ckks", (3,)), ("masking", (2,))])
def test_the_weighted_sum_carries_the_noise_the_accountant_assumes(scheme, drop):
    dim, z, clip, n = 20_000, 1.0, 1.0, 4
    weights = [1.0, 2.0, 3.0, 4.0]  # FedAvg's public sample counts: unequal on purpose
    secure = SecureSum(scheme, clip=noise_range(clip, noise_multiplier=z, n_clients=n), ring_bits=32)
    fed = Federation(np.zeros(dim), FedAvg(), secure, list(range(n)), update_clip=clip, noise_multiplier=z)
    updates = {i: ClientUpdate(i, np.zeros(dim), weights[i], 1.0) for i in range(n)}
    fed.aggregate(updates, drop=drop)
    survivors = [i for i in range(n) if i not in drop]
    noise_in_sum = fed.global_vec * sum(weights[i] for i in survivors)  # the mean times Σw: the sum's noise
    expect = z * clip * max(weights) * math.sqrt(len(survivors) / n)
    stat = float(np.sum(noise_in_sum ** 2)) / expect ** 2
    assert chi2.ppf(1e-6, dim) <= stat <= chi2.ppf(1 - 1e-6, dim), stat / dim


def test_shares_stay_in_the_encoders_bound_and_refuse_a_weight_above_the_reference():
    x = np.full(1000, 1.0 / math.sqrt(1000))  # L2 norm exactly the clip
    for w in (0.5, 4.0):
        noisy = weighted_share(x, w, clip_norm=1.0, noise_multiplier=2.0, n_clients=3, reference_weight=4.0)
        assert np.max(np.abs(w * noisy)) <= 4.0 * noise_range(1.0, noise_multiplier=2.0, n_clients=3)
    with pytest.raises(ConfigurationError, match="reference_weight"):
        weighted_share(x, 5.0, clip_norm=1.0, noise_multiplier=2.0, n_clients=3, reference_weight=4.0)


def test_distributed_noise_with_the_loss_weighted_rule_is_refused():
    with pytest.raises(ConfigError, match="weight lane"):
        Federation(np.zeros(10), LossWeighted(), SecureSum("ckks"), [0, 1, 2], update_clip=1.0, noise_multiplier=1.0)


def test_runs_report_the_central_epsilon_of_the_sums_they_release(tmp_path):
    cfg = _tiny(tmp_path, scheme="ckks", noise_multiplier=2.0, update_clip=1.0, dropouts={"2": [1]})
    cfg.train.rounds, cfg.train.local_steps = 3, 1
    rows = Runner(cfg).run()
    # per round: n = 3 shares, m survivors (2 in round 2); the composed sum noise is Gaussian with
    # σ_total = (Σ_r σ_r^-2)^-1/2, σ_r = z·√(m_r/n): its exact ε against the reported one, round by round
    sigmas = [2.0 * math.sqrt(m / 3) for m in (3, 2, 3)]
    for r, row in enumerate(rows):
        total = sum(s ** -2 for s in sigmas[:r + 1]) ** -0.5
        exact = _exact_epsilon(total, cfg.dp.delta)
        assert exact - 1e-6 <= row.central_epsilon <= exact + 1e-2, (r, row.central_epsilon, exact)
    assert rows[1].central_epsilon > rows[0].central_epsilon and rows[0].epsilon is None  # no DP-SGD here
    assert all(r.as_json()["central_epsilon"] == r.central_epsilon for r in rows)


def _independent_central_epsilon(z: float, n: int, c: int, rounds: int, delta: float) -> float:
    """dp-accounting's PLD of `rounds` Gaussian sums whose honest noise is (n − c) shares of std z/√n each."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    sigma = z * math.sqrt((n - c) / n)
    one = pld.from_gaussian_mechanism(sigma, value_discretization_interval=1e-4)
    return one.self_compose(rounds).get_epsilon_for_delta(delta)


def test_the_central_epsilon_against_a_coalition_matches_an_independent_accountant():
    # the numbers: n = 10, z = 1, 20 rounds; 4 colluders subtract their own shares
    delta = 1e-5
    honest = distributed_epsilon(1.0, 1.0, delta, n_clients=10, survivors=10, rounds=20)
    coalition = distributed_epsilon(1.0, 1.0, delta, n_clients=10, survivors=10, rounds=20, colluders=4)
    assert coalition == pytest.approx(_independent_central_epsilon(1.0, 10, 4, 20, delta), rel=2e-2)
    assert honest == pytest.approx(_independent_central_epsilon(1.0, 10, 0, 20, delta), rel=2e-2)
    assert coalition > 1.3 * honest  # ~40 vs ~28: the coalition costs the honest clients a lot
    with pytest.raises(ConfigurationError, match="no honest noise"):
        distributed_epsilon(1.0, 1.0, delta, n_clients=10, survivors=10, rounds=1, colluders=10)


@pytest.mark.parametrize("scheme", ["ckks", "masking"])
def test_runs_report_the_coalition_they_state_the_central_epsilon_against(tmp_path, scheme):
    cfg = _tiny(tmp_path, scheme=scheme, noise_multiplier=2.0, update_clip=1.0)
    cfg.train.rounds, cfg.train.local_steps = 2, 1
    cfg.dp.colluders = 1
    runner = Runner(cfg)
    rows = runner.run()
    assert all(r.colluders == 1 and r.as_json()["colluders"] == 1 for r in rows)
    assert all(r.central_relation == "add-remove client" for r in rows)
    gaussian = _independent_central_epsilon(2.0, 3, 1, 2, cfg.dp.delta)  # 2 sums, 3 − 1 honest shares
    if scheme == "ckks":
        assert rows[-1].central_epsilon == pytest.approx(gaussian, rel=2e-2)
        return
    # masking adds discrete Gaussian shares: two zCDP sums of h = 3 − 1 honest shares, ρ = n(1 + I)²/(2hz²)
    # with the rounding's inflation I (Kairouz et al. 2021, τ = 0 at these scales), run through dp-accounting's
    # RDP accountant directly; it costs more than the continuous Gaussian of the same honest noise
    from dp_accounting import ZCDpEvent
    from dp_accounting.rdp import RdpAccountant

    d = runner.central.dim
    inflation = max(math.sqrt(d) / 2 ** 16, 2 * 2.0 * math.sqrt(d) / (math.sqrt(3) * 2 ** 24))
    acc = RdpAccountant()
    acc.compose(ZCDpEvent(3 * (1 + inflation) ** 2 / (2 * 2 * 2.0 ** 2)), 2)
    assert rows[-1].central_epsilon == pytest.approx(acc.get_epsilon(cfg.dp.delta), rel=1e-3)
    assert rows[-1].central_epsilon > gaussian
    cfg.dp.colluders = 3  # all three shares: nothing honest left to state a guarantee with
    with pytest.raises(ConfigError, match="no honest noise share"):
        Runner(cfg)
