"""Example-level DP noise placed under secure aggregation (``[dp] placement = "distributed"``, privacy.placement).

The shares' sizing is checked against numpy draws, the ledgers' ε against dp_accounting directly, and the noise
actually inside a released CKKS sum against its stated standard deviation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from privacy.durable import ClientLedger, ledger_file
from privacy.errors import ConfigurationError, LedgerMismatchError
from privacy.placement import DistributedNoise
from tests.independent import pld_epsilon
from tests.test_training_runner import _tiny
from training.config import RunConfig
from training.errors import ConfigError
from training.inprocess.simulation import Runner


@st.composite
def _splits(draw):
    n = draw(st.integers(2, 12))
    c = draw(st.integers(0, n - 1))
    m_min = draw(st.integers(c + 1, n))
    m = draw(st.integers(m_min, n))
    return n, c, m_min, m


@settings(max_examples=25, deadline=None)
@given(_splits(), st.floats(0.3, 4.0))
def test_the_honest_shares_of_a_sum_carry_the_stated_noise(split, sigma):
    """m shares of std σC/√(n−c) are drawn with numpy; the coalition removes its c; the rest must have the std
    sum_multiplier(m)·C, never below the effective multiplier's."""
    n, c, m_min, m = split
    p, clip = DistributedNoise(sigma, n, c, m_min), 0.7
    rng = np.random.default_rng(n * 1000 + c * 100 + m)
    shares = rng.normal(0.0, p.share_multiplier * clip, size=(m, 40_000))
    honest = shares[c:].sum(axis=0)  # the coalition's c shares are known to it: subtracted
    assert honest.std() == pytest.approx(p.sum_multiplier(m) * clip, rel=0.03)
    assert p.sum_multiplier(m) >= p.effective_multiplier - 1e-12
    assert (m - c) * p.share_multiplier ** 2 == pytest.approx(p.sum_multiplier(m) ** 2)
    if m == n and c == 0:
        assert p.sum_multiplier(m) == pytest.approx(sigma)  # a trusted curator's σ, once


@pytest.mark.parametrize("args", [(1.0, 3, 2, 2), (1.0, 3, 0, 4), (0.0, 3, 0, 3), (1.0, 3, -1, 3),
                                  (1.0, 3, 0, 3, -1.0)])
def test_a_split_without_a_guarantee_is_refused(args):
    with pytest.raises(ConfigurationError):
        DistributedNoise(*args)


def _distributed(tmp_path, **over) -> RunConfig:
    cfg = _tiny(tmp_path, scheme="ckks", aggregator="gradient", min_contributors=3)
    cfg.dp.enabled, cfg.dp.placement, cfg.dp.colluders = True, "distributed", 0
    cfg.dp.noise_multiplier, cfg.dp.max_grad_norm = 1.0, 0.5
    cfg.train.local_steps, cfg.train.optimizer, cfg.train.lr, cfg.train.rounds = 1, "sgd", 1.0, 1
    for section_key, v in over.items():
        section, key = section_key.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


@pytest.mark.parametrize("over, why", [
    ({"train__local_steps": 2}, "local_steps = 1"),
    ({"train__optimizer": "adamw"}, "optimizer = 'sgd'"),
    ({"federation__aggregator": "fedavg"}, "aggregator = 'gradient'"),
    ({"federation__scheme": "masking"}, "masking"),
    ({"federation__noise_multiplier": 0.5}, "federation.noise_multiplier = 0"),
    ({"federation__update_clip": None}, "update_clip"),
    ({"data__partition": "capacity"}, "capacity"),
    ({"dp__noise_multiplier": 0.0}, "dp.noise_multiplier > 0"),
    ({"dp__colluders": 3}, "no honest noise"),
    ({"federation__min_contributors": 4}, "cannot exceed"),
])
def test_distributed_placement_refuses_a_configuration_whose_guarantee_it_cannot_state(tmp_path, over, why):
    with pytest.raises(ConfigError, match="distributed") as e:
        _distributed(tmp_path, **over).validate()
    assert why in str(e.value)


def test_the_trainer_refuses_a_round_of_several_steps_under_distributed_placement(tmp_path):
    cfg = _distributed(tmp_path)
    runner = Runner(cfg)
    private = runner.trainers[0].private
    with pytest.raises(ConfigurationError, match="one noisy step per round"):
        private.begin_round(2)
    assert private.ledger.spent() == 0.0  # nothing was reserved


@pytest.mark.parametrize("colluders", [0, 1])
def test_the_noise_in_the_released_sum_has_the_stated_standard_deviation(tmp_path, colluders):
    """One CKKS round of 3 clients at σ = 40: the released mean lr·(Σ clipped + Σ shares)/(m·B) is, to a 1e-5
    relative part, the shares' noise; its std must be σC·√(m/(n−c)) (c = 1: √1.5 more than a curator's σC).
    Shares sized σC/√n (update-level) would give σC at c = 1 and fail."""
    sigma, clip = 40.0, 0.5
    cfg = _distributed(tmp_path, dp__noise_multiplier=sigma, dp__max_grad_norm=clip, dp__colluders=colluders,
                       federation__min_contributors=2 if colluders else 3)
    runner = Runner(cfg)
    before = runner.fed.global_vec.copy()
    runner.run()
    mean = before - runner.fed.global_vec  # the gradient rule, SGD at server lr 1: w − mean
    n, b = cfg.federation.clients, cfg.train.batch_size
    noise_std = mean.std() * n * b / cfg.train.lr  # back to the sum of the 3 contributions
    assert mean.size > 20_000
    assert noise_std == pytest.approx(sigma * clip * math.sqrt(n / (n - colluders)), rel=0.03)
    # every client recorded σ_eff = σ·√((m_min − c)/(n − c)) at its own q, checked against dp_accounting directly
    m_min = cfg.federation.min_contributors
    for tr in runner.trainers:
        q = tr.private.sample_rate
        expected = pld_epsilon([(sigma * math.sqrt((m_min - colluders) / (n - colluders)), q, 1)],
                               cfg.dp.delta, relation="replace-one")
        assert tr.epsilon() == pytest.approx(expected, rel=0.02)


def test_the_ledger_states_its_adversary_and_never_widens_it(tmp_path):
    """A ledger against anyone may continue under the weaker adversary of a secure sum (its releases hold
    there too); one recorded against the server and c colluders refuses to be read as against anyone."""
    path = ledger_file(tmp_path, "client-0")
    from privacy.events import PrivacyEvent

    local = ClientLedger(path, client="client-0", data="d", epsilon_budget=None, delta=1e-5)
    local.spend_events([PrivacyEvent(1.0, 0.01, 10)], "local round")
    p = DistributedNoise(1.0, 3, 0, 3)
    shared = ClientLedger(path, client="client-0", data="d", epsilon_budget=None, delta=1e-5,
                          adversary=p.adversary)
    assert shared.spent() == pytest.approx(local.spent())  # continued, not reset
    shared.spend_events([PrivacyEvent(p.effective_multiplier, 0.01, 1)], "distributed round")
    with pytest.raises(LedgerMismatchError, match="adversary"):
        ClientLedger(path, client="client-0", data="d", epsilon_budget=None, delta=1e-5)
    with pytest.raises(LedgerMismatchError, match="adversary"):
        ClientLedger(path, client="client-0", data="d", epsilon_budget=None, delta=1e-5,
                     adversary=DistributedNoise(1.0, 3, 1, 3).adversary)


def test_a_cohort_below_the_accounted_minimum_is_refused_before_encoding():
    from secagg.errors import ConfigurationError as SecaggConfigurationError
    from training.engine.contribution import contribute
    from training.engine.rules import make_strategy
    from training.workload.client_update import ClientUpdate

    update = ClientUpdate(0, np.ones(4), 8, 1.0)
    with pytest.raises(SecaggConfigurationError, match="privacy accounting assumes"):
        contribute(make_strategy("gradient"), update, 1, {}, update_clip=None, cohort=2, min_cohort=3)


def test_a_deployment_leaves_room_in_the_value_bound_for_the_shares(tmp_path):
    """`secagg up` and Flower encode against the run file's bound: update_clip plus 9 standard deviations of
    one client's share lr·σC/(B·√(n − c)) per coordinate."""
    from training.deployment import load_transport_config

    run = tmp_path / "run.toml"
    run.write_text("[train]\nlocal_steps = 1\noptimizer = \"sgd\"\nlr = 0.5\nbatch_size = 8\n[dp]\nplacement = "
                   "\"distributed\"\ncolluders = 1\nnoise_multiplier = 2.0\nmax_grad_norm = 0.5\n[federation]\n"
                   "scheme = \"packed\"\naggregator = \"gradient\"\nclients = 5\nmin_contributors = 4\n"
                   "update_clip = 1.0\n")
    cfg = load_transport_config(run)
    assert cfg.value_bound == pytest.approx(1.0 + 9 * 0.5 * 2.0 * 0.5 / (8 * math.sqrt(5 - 1)))
    assert cfg.scheme_options()["clip"] == cfg.value_bound
