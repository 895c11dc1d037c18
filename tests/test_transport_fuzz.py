"""Fuzz-style: mutated, replayed, duplicated and mis-addressed messages fed to the aggregator and the key holder.
Each must be refused with a named secagg error, never crash a service, and never change a round's result."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from secagg.errors import SecAggError, WrongRoundError
from tests.fixtures.transport import capture_finalize
from training.services.client import ClientAgent
from training.services.loopback import Deployment, FixedSource
from training.services.wire import TransportError, pack

MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("random"), st.binary(max_size=64)),
    st.tuples(st.just("round"), st.sampled_from([-1, 1, 1000])),
    st.tuples(st.just("claim"), st.integers(1, 2)),
    st.tuples(st.just("raw"), st.binary(max_size=64)),
)


def mutate(payload: bytes, op: tuple) -> bytes:
    kind = op[0]
    if kind == "flip":
        i = op[1] % len(payload)
        return payload[:i] + bytes([payload[i] ^ (1 << op[2])]) + payload[i + 1:]
    if kind == "truncate":
        return payload[: op[1] % len(payload)]
    if kind == "append":
        return payload + op[1]
    if kind == "random":
        return op[1]
    return payload


class Fuzzer(ClientAgent):
    """Before each genuine message, sends every mutation of it; after it, sends it again (a duplicate)."""

    def __init__(self, *args, mutations, **kw) -> None:
        super().__init__(*args, **kw)
        self.mutations, self.refusals, self.accepted, self.genuine = mutations, [], [], 0

    def _try(self, envelope: bytes) -> None:
        try:
            self.stub.stream_unary("Send", envelope, 30.0)
        except SecAggError as exc:
            self.refusals.append(exc)
            return
        self.accepted.append(envelope)

    def _send(self, round_id, outs):
        for out in outs:
            for op in self.mutations:
                header = {"client_id": self.client_id, "round_id": round_id}
                if op[0] == "round":
                    header["round_id"] = round_id + op[1]
                if op[0] == "claim":
                    header["client_id"] = (self.client_id + op[1]) % 3
                self._try(op[1] if op[0] == "raw" else pack(header, mutate(out.payload, op)))
            super()._send(round_id, [out])
            self.genuine += 1
            self._try(pack({"client_id": self.client_id, "round_id": round_id}, out.payload))


@settings(max_examples=6, deadline=None)
@given(st.lists(MUTATION, min_size=1, max_size=4), st.sampled_from([0, 1]))
def test_aggregator_refuses_mutations_and_the_round_stays_correct(mutations, fuzzer_id):
    rng = np.random.default_rng(7)
    updates = [rng.uniform(-1, 1, 12) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    sources = {i: FixedSource(updates[i], weights[i]) for i in range(3)}
    with Deployment("masking", sources, 12, stage_timeout=3.0) as dep:
        dep.agents[fuzzer_id].close()
        fuzzer = dep.agent(fuzzer_id, sources[fuzzer_id], cls=Fuzzer, mutations=mutations)
        dep.agents[fuzzer_id] = fuzzer
        records = dep.run(timeout=60)
        rejected = sum(dep.coordinator.rejections.values())
    assert not fuzzer.accepted, "a mutated or duplicated message was accepted"
    assert fuzzer.genuine >= 2 and len(fuzzer.refusals) == (len(mutations) + 1) * fuzzer.genuine
    assert not [exc for exc in fuzzer.refusals if isinstance(exc, TransportError)]  # every refusal is named
    assert rejected >= 1
    assert [r.status for r in records] == ["done"]
    res = records[0].result
    assert res.contributors == (0, 1, 2)
    expected = sum(w * u for w, u in zip(weights, updates)) / sum(weights)
    assert np.allclose(res.mean, expected, atol=1e-4)


@pytest.fixture(scope="module", params=["ckks", "packed"])
def keyholder_capture(request):
    """A finished one-round deployment of a key-holder scheme and the aggregate its key holder decrypted."""
    rng = np.random.default_rng(8)
    updates = [rng.uniform(-1, 1, 10) for _ in range(3)]
    sources = {i: FixedSource(updates[i], 1.0) for i in range(3)}
    dep = Deployment(request.param, sources, 10)
    captured = capture_finalize(dep)
    try:
        records = dep.run(timeout=90)
        assert [r.status for r in records] == ["done"] and len(captured) == 1
        yield dep, captured[0], np.mean(updates, axis=0)
    finally:
        dep.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MUTATION.filter(lambda op: op[0] in ("flip", "truncate", "append", "random")))
def test_keyholder_refuses_mutated_aggregates_without_crashing(keyholder_capture, op):
    dep, (round_id, payload), _ = keyholder_capture
    bad = mutate(payload, op)
    if bad == payload:
        return
    with pytest.raises(SecAggError) as info:
        dep.link.finalize(round_id + 1, bad)
    assert not isinstance(info.value, TransportError), info.value  # a named refusal, not a crash


def test_keyholder_refuses_replays(keyholder_capture):
    dep, (round_id, payload), expected = keyholder_capture
    with pytest.raises(WrongRoundError):
        dep.link.finalize(round_id, payload)
    with pytest.raises(WrongRoundError):
        dep.link.finalize(0, payload)
    assert dep.link.context()  # still serving
    assert np.allclose(dep.coordinator.state.model, expected, atol=1e-4)


class Replayer(ClientAgent):
    """Keeps its messages of earlier rounds and replays each of them, under both the old and the current round id,
    before every genuine message of a later round."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.old: list[tuple[int, bytes]] = []
        self.refusals: list[Exception] = []
        self.accepted = 0

    def _send(self, round_id, outs):
        for out in outs:
            for old_round, payload in [x for x in self.old if x[0] != round_id]:
                for rid in (old_round, round_id):
                    try:
                        self.stub.stream_unary("Send", pack({"round_id": rid}, payload), 30.0)
                        self.accepted += 1
                    except SecAggError as exc:
                        self.refusals.append(exc)
            super()._send(round_id, [out])
            self.old.append((round_id, out.payload))


@pytest.mark.parametrize("scheme", ["ckks", "masking", "packed"])
def test_replays_of_an_earlier_round_are_refused(scheme):
    rng = np.random.default_rng(9)
    updates = [rng.uniform(-1, 1, 6) for _ in range(3)]
    sources = {i: FixedSource(updates[i], 1.0) for i in range(3)}
    with Deployment(scheme, sources, 6, rounds=2) as dep:
        dep.agents[0].close()
        dep.agents[0] = replayer = dep.agent(0, sources[0], cls=Replayer)
        records = dep.run(timeout=90)
    assert replayer.accepted == 0 and replayer.refusals
    assert all(isinstance(e, SecAggError) and not isinstance(e, TransportError) for e in replayer.refusals), \
        [repr(e) for e in replayer.refusals if isinstance(e, TransportError) or not isinstance(e, SecAggError)]
    assert any(isinstance(e, WrongRoundError) for e in replayer.refusals)
    assert [r.status for r in records] == ["done", "done"]
    assert all(r.result.contributors == (0, 1, 2) for r in records)
    assert np.allclose(dep.coordinator.state.model, 2 * np.mean(updates, axis=0), atol=1e-4)


@pytest.fixture(scope="module")
def idle_aggregator(tmp_path_factory):
    """An aggregator service with no round running, and a stub holding client 0's certificate."""
    from secagg.roles import AGGREGATOR
    from training.services.aggregator import serve_aggregator
    from training.services.pki.certs import Credentials, init_certs
    from training.services.checkpoint import ServerState
    from training.services.coordinator import Coordinator, RoundPolicy
    from training.services.rpc import Stub, open_channel
    from training.engine.roles import make_scheme

    d = tmp_path_factory.mktemp("fuzz-pki")
    init_certs(d, 1)
    coord = Coordinator(make_scheme("masking", {"signed": False}), ServerState(np.zeros(4)), RoundPolicy(1, 2, 2))
    server, port = serve_aggregator(coord, Credentials.load(d, AGGREGATOR), "127.0.0.1", 0,
                                    max_message_bytes=1 << 20, workers=4, poll_seconds=0.05)
    channel = open_channel(Credentials.load(d, 0), f"127.0.0.1:{port}", AGGREGATOR)
    try:
        yield coord, Stub(channel, "secagg.Aggregator", 1 << 20)
    finally:
        channel.close()
        server.stop(0).wait()


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                   st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither (raw Inf: badinput tests)
                   st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
                   st.lists(st.dictionaries(st.sampled_from(["noise_multiplier", "sample_rate", "steps"]),
                                            st.one_of(st.integers(-1, 5), st.floats(-1, 5)), max_size=3), max_size=2))
HEADERS = st.dictionaries(st.sampled_from(["weight", "client_id", "round_id", "privacy", "report", "type", "zz"]),
                          VALUES, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["Checkin", "Receive", "Status"]),
       st.one_of(HEADERS.map(pack), st.binary(max_size=80), st.tuples(HEADERS, st.binary(min_size=1, max_size=8))
                 .map(lambda hb: pack(*hb))))
def test_aggregator_control_methods_answer_any_request_without_crashing(idle_aggregator, method, request):
    from training.services.wire import unpack

    coord, stub = idle_aggregator
    try:
        header, _ = unpack(stub.unary_stream(method, request, 10.0))
    except SecAggError as exc:
        assert not isinstance(exc, TransportError), exc  # a named refusal, never INTERNAL
    else:
        if method == "Checkin":  # a valid check-in of an idle aggregator waits, then says so
            assert header.get("type") == "idle", header
        elif method == "Status":
            assert header["round"] == 0 and header["open"] is None
        else:
            pytest.fail(f"Receive answered {header} while no round is open")
    assert not coord.waiting and coord.current is None and coord.state.round == 0
