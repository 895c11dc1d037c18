"""The sans-I/O round engine on its own: no I/O imports, effects in order, refusals that change nothing."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import MalformedMessageError, UnknownClientError, WrongRoundError
from training.engine import Mail, ModelReply, Persist, RoundDone, RoundEngine, RoundPolicy, ServerState, Task
from training.engine.contribution import contribute
from training.engine.roles import make_scheme
from training.engine.terms import StrategyStep
from training.engine.rules import BufferedAsync, FedAvg
from training.workload.client_update import ClientUpdate

ENGINE = pathlib.Path(__file__).resolve().parents[1] / "training" / "engine"
FORBIDDEN = {"threading", "time", "socket", "grpc", "flwr", "asyncio", "subprocess", "torch"}


def test_no_engine_module_imports_threads_clocks_sockets_grpc_flower_or_torch():
    found = {}
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = {n.split(".")[0] for n in names} & FORBIDDEN
            if bad:
                found[str(path.relative_to(ENGINE))] = sorted(bad)
    assert len(list(ENGINE.rglob("*.py"))) >= 20 and found == {}
    # the scan can fail: a forbidden import is found when present
    assert {n.split(".")[0] for n in ["grpc.aio"]} & FORBIDDEN


def _engine(n=3, **policy):
    scheme = make_scheme("masking", {"clip": 1.0, "signed": False, "rounding": "deterministic"})
    return RoundEngine(scheme, ServerState(np.zeros(4)), RoundPolicy(rounds=2, cohort_size=n, min_clients=n,
                                                                      **policy))


def test_a_round_id_is_persisted_before_any_task_and_the_model_before_round_done():
    eng = _engine()
    for c in range(3):
        assert eng.checkin(c, 1.0 + c, now=0.0)
    eng.tick(0.0)
    effects = eng.drain()
    assert isinstance(effects[0], Persist) and [type(e) for e in effects[1:]] == [Task] * 3
    assert eng.state.next_round_id == 2
    tasks = {e.cid: e for e in effects[1:]}
    params = tasks[0].header["params"]
    assert params["strategy"]["cohort_size"] == 3 and params["strategy"]["max_weight"] == 3.0
    roles = {c: eng.scheme.client_role(c, params, None) for c in range(3)}
    inbox = []
    for c, role in roles.items():
        for out in role.start(np.full(4, 0.1 * (c + 1)), 1.0 + c):
            eng.deliver(c, 1, out.payload, now=0.1)
    while True:
        effects = eng.drain()
        done = [e for e in effects if isinstance(e, RoundDone)]
        if done:
            kinds = [type(e) for e in effects]
            assert kinds.index(Persist) < kinds.index(RoundDone)  # model durable before the round is reported
            break
        inbox = [e for e in effects if isinstance(e, Mail)]
        assert inbox
        for m in inbox:
            for out in roles[m.cid].receive(m.payload):
                eng.deliver(m.cid, m.round_id, out.payload, now=0.2)
    rec = done[0].record
    assert rec.status == "done" and rec.result.contributors == (0, 1, 2)
    expected = sum((1.0 + c) * 0.1 * (c + 1) for c in range(3)) / 6.0
    np.testing.assert_allclose(eng.state.model, expected, atol=1e-6)
    assert eng.state.round == 1 and eng.current is None


def test_messages_for_other_rounds_or_from_outsiders_are_refused_and_change_nothing():
    eng = _engine()
    for c in range(3):
        eng.checkin(c, 1.0, now=0.0)
    eng.tick(0.0)
    eng.drain()
    with pytest.raises(UnknownClientError):
        eng.deliver(7, 1, b"SA\x01\x01", now=0.0)
    with pytest.raises(WrongRoundError):
        eng.deliver(0, 2, b"SA\x01\x01", now=0.0)
    with pytest.raises(MalformedMessageError):
        eng.deliver(0, 1, b"garbage", now=0.0)
    assert eng.drain() == [] and eng.current.up == {} and eng.current.stage == "advertise"


@settings(max_examples=30, deadline=None)
@given(st.floats(0.1, 50.0), st.integers(0, 4))
def test_a_silent_stage_is_closed_at_its_deadline_and_the_round_aborts_after_max_closes(timeout, max_closes):
    eng = _engine(stage_timeout=timeout, max_closes=max_closes)
    for c in range(3):
        eng.checkin(c, 1.0, now=0.0)
    eng.tick(0.0)
    eng.drain()
    assert eng.next_deadline(0.0) == pytest.approx(timeout)
    eng.tick(timeout * 0.99)
    assert eng.current is not None and eng.current.closes == 0  # not yet due
    now, done = 0.0, []
    for _ in range(max_closes + 2):
        now = eng.next_deadline(now)
        eng.tick(now)
        done += [e for e in eng.drain() if isinstance(e, RoundDone)]
        if done:
            break
    assert len(done) == 1 and done[0].record.status == "aborted"
    assert eng.state.round == 0 and np.array_equal(eng.state.model, np.zeros(4))


def _answer(eng, tasks, now):
    """Every cohort member of the open round answers every message until the round is done."""
    params = tasks[0].header["params"]
    roles = {t.cid: eng.scheme.client_role(t.cid, params, None) for t in tasks}
    for c, role in roles.items():
        for out in role.start(np.full(4, 0.1), 1.0):
            eng.deliver(c, tasks[0].round_id, out.payload, now=now)
    while True:
        effects = eng.drain()
        done = [e for e in effects if isinstance(e, RoundDone)]
        if done:
            return done[0].record.status
        for m in [e for e in effects if isinstance(e, Mail)]:
            for out in roles[m.cid].receive(m.payload):
                eng.deliver(m.cid, m.round_id, out.payload, now=now)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 4))
def test_the_federation_stops_after_max_aborts_attempts_in_a_row_and_names_the_last(bound):
    """A cohort that checks in and then stays silent, every round, cannot keep the aggregator retrying forever:
    after ``max_aborts`` aborted attempts in a row it stops and says why; an applied round resets the count."""
    eng = RoundEngine(make_scheme("masking", {"clip": 1.0, "signed": False, "rounding": "deterministic"}),
                      ServerState(np.zeros(4)), RoundPolicy(rounds=100, cohort_size=3, min_clients=3,
                                                            stage_timeout=1.0, max_closes=0, max_aborts=bound))
    now = 0.0
    plan = ["silent"] * (bound - 1) + ["answer"] + ["silent"] * bound + ["silent"]  # the last: never opened
    for i, what in enumerate(plan):
        for c in range(3):
            eng.checkin(c, 1.0, now=now)
        eng.tick(now)
        tasks = [e for e in eng.drain() if isinstance(e, Task)]
        if i == len(plan) - 1:
            assert tasks == [] and eng.current is None  # stopped: no further round opens
            break
        assert len(tasks) == 3 and not eng.finished
        if what == "answer":
            assert _answer(eng, tasks, now) == "done"
            continue
        now = eng.next_deadline(now)
        eng.tick(now)
        assert [e.record.status for e in eng.drain() if isinstance(e, RoundDone)] == ["aborted"]
    assert eng.finished and eng.aborts == bound and eng.state.round == 1
    assert eng.stop_reason.startswith(f"{bound} attempts in a row aborted; the last: StageError")


def test_privacy_reports_compose_once_and_are_persisted_before_the_answer():
    eng = _engine()
    events = [{"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 10}]
    eng.checkin(0, 1.0, 0.0, privacy=events, report="report-one")
    assert [type(e) for e in eng.drain()] == [Persist]
    eng.checkin(0, 1.0, 0.0, privacy=events, report="report-one")  # a re-send after a lost reply
    assert eng.drain() == []
    with pytest.raises(MalformedMessageError):
        eng.checkin(1, float("nan"), 0.0)
    assert 1 not in eng.waiting


def test_async_admission_sends_the_model_to_clients_without_a_fresh_update():
    scheme = make_scheme("masking", {"clip": 1.0, "signed": False})
    eng = RoundEngine(scheme, ServerState(np.ones(4)), RoundPolicy(5, 2, 2),
                      step=StrategyStep(BufferedAsync(buffer_size=2, max_staleness=0)))
    assert not eng.checkin(0, 1.0, 0.0)  # nothing trained yet: here is version 0
    (reply,) = eng.drain()
    assert isinstance(reply, ModelReply) and reply.version == 0 and np.array_equal(reply.model, np.ones(4))
    with pytest.raises(MalformedMessageError):
        eng.checkin(0, 1.0, 0.0, base=3)  # a version that does not exist yet
    assert eng.checkin(0, 1.0, 0.0, base=0) and eng.checkin(1, 1.0, 0.5, base=0)
    eng.tick(1.0)
    tasks = [e for e in eng.drain() if isinstance(e, Task)]
    assert len(tasks) == 2 and all(t.model is None for t in tasks)  # members trained already
    assert tasks[0].header["params"]["strategy"]["base_versions"] == {"0": 0, "1": 0}


def test_a_client_refuses_a_cohort_smaller_than_its_configured_noise_shares():
    """A malicious aggregator that names a smaller cohort would make every client's noise share too small."""
    from secagg.errors import ConfigurationError

    update = ClientUpdate(0, np.full(8, 0.1), 10, 1.0)
    terms = {"name": "fedavg", "private_weights": False, "max_weight": 10.0}
    with pytest.raises(ConfigurationError, match="noise shares"):
        contribute(FedAvg(), update, 0, terms, update_clip=1.0, noise_multiplier=1.0, noise_shares=5, cohort=3)
    c = contribute(FedAvg(), update, 0, terms, update_clip=1.0, noise_multiplier=1.0, noise_shares=5, cohort=5)
    assert c.weight == 10.0 and not np.allclose(c.vector, 0.1)  # noised
    plain = contribute(FedAvg(), update, 0, terms, update_clip=0.1, cohort=3)
    assert np.linalg.norm(plain.vector) == pytest.approx(0.1)  # clipped in L2


@settings(max_examples=60, deadline=None)
@given(st.integers(-3, 9), st.integers(0, 4), st.binary(max_size=64))
def test_any_refused_delivery_changes_nothing(sender, round_id, payload):
    """Whatever sender, round id and bytes a peer chooses: delivered or refused with a named SecAggError, and a
    refusal leaves the round exactly as it was (no effects, no bytes counted, same stage)."""
    from secagg.errors import SecAggError

    eng = _engine()
    for c in range(3):
        eng.checkin(c, 1.0, now=0.0)
    eng.tick(0.0)
    eng.drain()
    before = (dict(eng.current.up), eng.current.stage, eng.state.next_round_id, eng.state.round)
    try:
        eng.deliver(sender, round_id, payload, now=0.5)
    except SecAggError:
        assert eng.drain() == []
        assert (dict(eng.current.up), eng.current.stage, eng.state.next_round_id, eng.state.round) == before
    else:  # random bytes are never a valid advertisement
        pytest.fail("a random payload was accepted")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 10)), min_size=1, max_size=15, unique_by=lambda x: x[0]),
       st.integers(1, 6))
def test_the_cohort_policy_takes_the_first_arrivals_for_a_buffer_and_any_waiting_clients_otherwise(arrivals, k):
    from training.engine.cohort import Cohorts

    policy = RoundPolicy(rounds=1, cohort_size=k, min_clients=1, checkin_timeout=100.0)
    sync, buf = Cohorts(StrategyStep(FedAvg()), policy), Cohorts(StrategyStep(BufferedAsync(buffer_size=k)), policy)
    order = sorted(arrivals, key=lambda a: a[1])
    for cid, t in order:
        assert sync.admit(cid, 1.0, None, 0, t) and buf.admit(cid, 1.0, 0, 0, t)
    now = order[-1][1]
    got, got_async = sync.choose(0, now), buf.choose(0, now)
    if len(arrivals) < k:  # not due until the first has waited checkin_timeout
        assert got is None and got_async is None
        got, got_async = sync.choose(0, order[0][1] + 100.0), buf.choose(0, order[0][1] + 100.0)
    cohort, bases = got
    assert bases is None and len(cohort) == min(k, len(arrivals)) and set(cohort) <= {c for c, _ in arrivals}
    first = [c for c, _ in order[:min(k, len(arrivals))]]
    assert sorted(got_async[0]) == sorted(first) and got_async[1] == {c: 0 for c in first}
    assert not set(cohort) & set(sync.waiting) and len(sync.waiting) == len(arrivals) - len(cohort)


def test_a_placement_report_fills_the_rows_and_a_malformed_one_changes_nothing():
    """A client's distributed-placement report (its exposed ε and its ledger's adversary) becomes the row's relation
    and exposed ε; a malformed one is refused before its privacy report is composed."""
    from training.engine.metrics import placement_of

    eng = _engine()
    events = [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1}]
    for bad in ({"exposed_epsilon": float("nan"), "adversary": "server"}, {"exposed_epsilon": -1.0, "adversary": "s"},
                {"exposed_epsilon": True, "adversary": "s"}, {"exposed_epsilon": 1.0, "adversary": "x" * 201}, [1.0]):
        with pytest.raises(MalformedMessageError):
            eng.checkin(0, 1.0, 0.0, privacy=events, report="report-one", placement=bad)
        assert "0" not in eng.state.ledgers and not eng.placements
    eng.checkin(0, 1.0, 0.0, privacy=events, report="report-one",
                placement={"exposed_epsilon": 9.4, "adversary": "server + 0"})
    eng.checkin(1, 1.0, 0.0, placement={"exposed_epsilon": 9.2, "adversary": "server + 0"})
    assert "0" in eng.state.ledgers
    assert placement_of(eng.placements) == {"epsilon_relation": "replace-one record of the clients' union, against "
                                            "server + 0", "exposed_epsilon_per_client": {0: 9.4, 1: 9.2}}
    assert placement_of({}) == {}
