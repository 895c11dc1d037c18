"""PrivacyLedger: heterogeneous composition, refusal before spending, remaining steps, exact persistence."""

from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from privacy.ledger import PrivacyLedger
from privacy.errors import BudgetExceededError, ConfigurationError, LedgerFormatError
from privacy.events import PrivacyEvent
from tests.independent import pld_epsilon

ROUNDS = [(1.0, 0.01, 100), (0.8, 0.02, 30), (1.2, 0.01, 50), (1.0, 0.01, 100)]


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_rounds_compose_like_an_independent_accountant_fed_the_same_history(accountant):
    ledger = PrivacyLedger(50.0, 1e-5, accountant=accountant)
    for sigma, q, steps in ROUNDS:
        ledger.spend(sigma, q, steps)
    assert ledger.events == tuple(PrivacyEvent(*r) for r in ROUNDS)
    if accountant == "rdp":  # Google's RDP accountant fed the same history, round by round
        acc = RdpAccountant()
        for sigma, q, steps in ROUNDS:
            acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
        assert abs(ledger.spent() / acc.get_epsilon(1e-5) - 1) < 0.01
    else:  # dp_accounting's PLD fed the same history, round by round (no grouping of equal rounds)
        ref = pld_epsilon(ROUNDS, 1e-5)
        assert ref - 1e-3 <= ledger.spent() <= ref * 1.01
    before = ledger.spent()
    ledger.spend(1.0, 0.01, 1)
    assert ledger.spent() > before  # one more step costs something


def test_refusal_happens_before_recording_and_leaves_state_unchanged():
    ledger = PrivacyLedger(2.0, 1e-5, accountant="rdp")
    ledger.spend(1.0, 0.01, 200)
    before = ledger.to_json()
    with pytest.raises(BudgetExceededError) as info:
        ledger.spend(1.0, 0.01, 100_000)
    assert info.value.epsilon_after > info.value.budget == 2.0
    assert ledger.to_json() == before
    with pytest.raises(BudgetExceededError):
        ledger.check(0.5, 0.5, 10)
    assert ledger.to_json() == before
    assert ledger.spent() <= ledger.epsilon_budget


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_remaining_steps_is_the_exact_boundary(accountant):
    ledger = PrivacyLedger(4.0, 1e-5, accountant=accountant)
    ledger.spend(1.0, 0.05, 20)
    k = ledger.remaining_steps(1.0, 0.05)
    assert k > 0
    ledger.check(1.0, 0.05, k)  # k fits
    with pytest.raises(BudgetExceededError):
        ledger.check(1.0, 0.05, k + 1)  # k + 1 does not
    for cap in (1, k - 1, k, k + 1, 3 * k):  # a capped search answers min(k, cap), as DP-SGD's budget check asks
        assert ledger.remaining_steps(1.0, 0.05, max_steps=cap) == min(k, cap)
    ledger.spend(1.0, 0.05, k)
    assert ledger.remaining_steps(1.0, 0.05) == 0
    assert ledger.remaining_steps(1.0, 0.05, max_steps=1) == 0


def test_json_round_trip_is_exact(tmp_path):
    ledger = PrivacyLedger(7.5, 1e-6, accountant="prv")
    ledger.spend(1.1, 0.013, 77)
    ledger.spend(0.9, 0.2, 3)
    restored = PrivacyLedger.from_json(ledger.to_json())
    assert restored == ledger
    assert restored.spent() == ledger.spent()  # bit-exact float
    assert restored.to_json() == ledger.to_json()
    path = tmp_path / "ledger.json"
    ledger.save(path)
    assert PrivacyLedger.load(path) == ledger
    # keeps composing after a reload exactly like the original
    assert restored.spend(1.0, 0.01, 10) == ledger.spend(1.0, 0.01, 10)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(version=99),
    lambda d: d.pop("events"),
    lambda d: d["events"].append({"noise_multiplier": -1, "sample_rate": 0.1, "steps": 1}),
    lambda d: d.update(spent=0.0),  # tampered: events compose to more
    lambda d: d.update(spent=1e9),
])
def test_malformed_or_tampered_ledger_is_refused(mutate):
    ledger = PrivacyLedger(5.0, 1e-5, accountant="rdp")
    ledger.spend(1.0, 0.05, 50)
    d = json.loads(ledger.to_json())
    mutate(d)
    with pytest.raises(LedgerFormatError):
        PrivacyLedger.from_json(json.dumps(d))
    with pytest.raises(LedgerFormatError):
        PrivacyLedger.from_json("{not json")


@pytest.mark.parametrize("budget,delta,acc", [(0, 1e-5, "prv"), (1, 0, "prv"), (1, 1e-5, "gdp"), (float("inf"), 1e-5, "prv")])
def test_bad_ledger_parameters_raise(budget, delta, acc):
    with pytest.raises(ConfigurationError):
        PrivacyLedger(budget, delta, accountant=acc)
