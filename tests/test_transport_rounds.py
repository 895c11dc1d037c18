"""Whole rounds over real gRPC + mTLS on loopback (in-process): same aggregate as ``secagg.simulate``, dropouts,
aborted rounds retried with the next cohort."""

from __future__ import annotations

import time

import numpy as np
import pytest

import secagg
from training.services.client import ClientAgent
from training.services.loopback import Deployment, FixedSource


def _data(n: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, dim) for _ in range(n)], [float(w) for w in rng.integers(1, 5, n)]


def _weighted_mean(updates, weights, ids):
    return sum(weights[i] * updates[i] for i in ids) / sum(weights[i] for i in ids)


class Vanishing(ClientAgent):
    """A client that goes silent for good after sending ``after`` messages (a crash, as the others see it)."""

    def __init__(self, *args, after: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.after, self.sent = after, 0

    def _send(self, round_id, outs):
        for out in outs:
            if self.sent >= self.after:
                self.stop.set()
                raise SystemExit("vanished")
            super()._send(round_id, [out])
            self.sent += 1


@pytest.mark.parametrize("scheme", ["masking", "ckks"])
def test_round_over_grpc_matches_simulate(scheme):
    updates, weights = _data(3, 40, seed=1)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    with Deployment(scheme, sources, 40) as dep:
        records = dep.run(timeout=90)
        model = dep.coordinator.state.model
    assert [r.status for r in records] == ["done"]
    res = records[0].result
    assert res.contributors == (0, 1, 2) and res.dropped == ()
    reference = secagg.simulate(updates, weights, scheme=scheme, seed=3)
    assert np.allclose(res.mean, reference, atol=1e-4)
    assert np.allclose(res.mean, _weighted_mean(updates, weights, range(3)), atol=1e-4)
    assert np.array_equal(model, res.mean)  # one FedAvg step from the zero model
    assert records[0].bytes_up > 0 and records[0].task_bytes > 40 * 4 * 3
    assert (records[0].keyholder_bytes > 0) == (scheme == "ckks")


# masking stages: 0 advertise keys, 1 share keys, 2 masked input, 3 consistency check, 4 unmask shares
@pytest.mark.parametrize("scheme", ["ckks", "packed", "masking"])
def test_a_streamed_round_over_grpc_in_a_small_window(scheme, monkeypatch):
    """Clients send their contributions in parts of one chunk; the aggregator's window holds two, so parts past it
    are refused (BackpressureError) and resent, and the key holder gets the aggregate in parts."""
    from secagg.errors import BackpressureError
    from secagg.he_stream import StreamedSum
    from training.engine.keyholder import KeyHolderDesk

    dim = {"ckks": 3 * 4096 + 5, "packed": 3 * 8192 + 5, "masking": 3 * (1 << 16) + 5}[scheme]
    updates, weights = _data(3, dim, seed=2)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    chunk = {"ckks": 8 * 2 * 2 * 8192, "packed": 8 * 2 * 1 * 4096}.get(scheme, 0)  # one ciphertext's residues
    options = {"window_bytes": 2 * chunk} if chunk else {}
    parts, refused = [], []
    finalize, check = KeyHolderDesk.finalize, StreamedSum.check

    def spy(self, round_id, payload):
        parts.append(round_id)
        return finalize(self, round_id, payload)

    def counting(self, *args):
        try:
            return check(self, *args)
        except BackpressureError:
            refused.append(args)
            raise

    monkeypatch.setattr(KeyHolderDesk, "finalize", spy)
    monkeypatch.setattr(StreamedSum, "check", counting)
    with Deployment(scheme, sources, dim, options=options) as dep:
        for cid in list(dep.agents):
            dep.agents[cid] = dep.agent(cid, sources[cid], part_chunks=1)
        dep.agents[2].on_task = lambda header: time.sleep(1.0)  # a late client: the others run into the window
        records = dep.run(timeout=120)
    assert [r.status for r in records] == ["done"]
    assert np.allclose(records[0].result.mean, _weighted_mean(updates, weights, range(3)), atol=1e-3)
    if scheme != "masking":
        assert len(parts) > 1  # the aggregate reached the key holder in parts
        assert refused  # the window refused parts, and the agents' resends finished the round


@pytest.mark.parametrize("scheme,after", [("masking", a) for a in range(5)] + [("ckks", 0)])
def test_client_silent_at_any_stage_is_a_dropout(scheme, after):
    updates, weights = _data(4, 16, seed=2)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    with Deployment(scheme, sources, 16, stage_timeout=1.0, options={"min_contributors": 2}
                    if scheme == "ckks" else {}) as dep:
        dep.agents[3].close()
        dep.agents[3] = dep.agent(3, sources[3], cls=Vanishing, after=after)
        records = dep.run(timeout=90)
    assert [r.status for r in records] == ["done"]
    res = records[0].result
    # a client that vanishes before its masked input is left out (its pairwise masks are reconstructed); one that
    # vanishes after it is still counted (the survivors reveal its self-mask)
    survivors = [0, 1, 2, 3] if scheme == "masking" and after >= 3 else [0, 1, 2]
    assert list(res.contributors) == survivors
    assert np.allclose(res.mean, _weighted_mean(updates, weights, survivors), atol=1e-4)
    if after == 2 or scheme == "ckks":  # exactly simulate's dropout point: keys and shares sent, no input
        reference = secagg.simulate(updates, weights, scheme=scheme, dropped=(3,), seed=5)
        assert np.allclose(res.mean, reference, atol=1e-4)


@pytest.mark.parametrize("scheme,after", [("ckks", 0), ("masking", 0), ("masking", 2)])
def test_too_few_survivors_abort_and_the_next_cohort_finishes_the_round(scheme, after):
    updates, weights = _data(5, 8, seed=3)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    late = 4
    first = {i: sources[i] for i in range(4)}
    options = {"min_contributors": 3} if scheme == "ckks" else {"threshold": 3}
    with Deployment(scheme, first, 8, stage_timeout=1.0, checkin_timeout=0.5, min_clients=3,
                    options=options, cert_clients=5) as dep:
        for vanishing in (2, 3):  # two of four go silent before submitting: 2 < 3 contributors (or threshold)
            dep.agents[vanishing].close()
            dep.agents[vanishing] = dep.agent(vanishing, sources[vanishing], cls=Vanishing, after=after)
        joined = []

        def on_task(header):  # the late client arrives once the doomed round is under way (not before run())
            if not joined:
                joined.append(header["round_id"])
                dep.agents[late] = dep.agent(late, sources[late])
                dep.start_agent(late)

        dep.agents[0].on_task = on_task
        records = dep.run(timeout=120)
        ids = [r.round_id for r in records]
    assert [r.status for r in records] == ["aborted", "done"], [(r.status, r.cohort, r.reason) for r in records]
    assert records[0].cohort == (0, 1, 2, 3)
    assert "DropoutError" in records[0].reason or "TooFewContributorsError" in records[0].reason
    assert ids[1] > ids[0]
    res = records[1].result
    assert res.contributors == (0, 1, 4)
    assert np.allclose(res.mean, _weighted_mean(updates, weights, [0, 1, 4]), atol=1e-4)
    assert dep.coordinator.state.round == 1


def test_signed_masking_clients_refuse_keys_substituted_by_the_aggregator(caplog):
    """An aggregator that swaps a neighbour's advertised key (a man-in-the-middle between clients) is caught by
    the CA-certified signatures: the victim refuses the roster, takes no further part, and is a dropout."""
    import dataclasses
    import logging

    from secagg.hazmat import kex
    from secagg.masking.messages import KeyRoster
    from secagg.messages import decode
    from secagg.roles import Outbound

    updates, weights = _data(4, 16, seed=4)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    caplog.set_level(logging.WARNING, logger="training.services.client")
    with Deployment("masking", sources, 16, stage_timeout=1.0) as dep:
        route, coord = dep.coordinator.engine._route, dep.coordinator
        attacker = kex.public_bytes(kex.generate())  # the aggregator's own key, to read client 0's shares

        def tampering(rnd, outs):
            forged = []
            for out in outs:
                msg = decode(out.payload) if out.to == 0 else None
                if isinstance(msg, KeyRoster):
                    swapped = (attacker,) + msg.c_pks[1:]
                    out = Outbound(0, dataclasses.replace(msg, c_pks=swapped).to_bytes())
                forged.append(out)
            route(rnd, forged)

        coord.engine._route = tampering
        assert dep.scheme.needs_identities
        records = dep.run(timeout=90)
    assert [r.status for r in records] == ["done"]
    res = records[0].result
    assert list(res.contributors) == [1, 2, 3]
    assert np.allclose(res.mean, _weighted_mean(updates, weights, [1, 2, 3]), atol=1e-4)
    refusals = [r.getMessage() for r in caplog.records if "client 0 refused a message" in r.getMessage()]
    assert refusals and all("AuthenticationError" in m for m in refusals)


class SlowTrainer(FixedSource):
    def compute(self, model, round_no):
        import time

        time.sleep(2.5)
        return super().compute(model, round_no)


@pytest.mark.parametrize("train_timeout,survivors", [(0.0, [0, 1]), (5.0, [0, 1, 2])])
def test_the_first_stage_deadline_leaves_time_for_local_training(train_timeout, survivors):
    updates, weights = _data(3, 8, seed=6)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    sources[2] = SlowTrainer(updates[2], weights[2])
    with Deployment("masking", sources, 8, stage_timeout=1.0, train_timeout=train_timeout) as dep:
        records = dep.run(timeout=90)
    assert [r.status for r in records] == ["done"]
    assert list(records[0].result.contributors) == survivors
    assert np.allclose(records[0].result.mean, _weighted_mean(updates, weights, survivors), atol=1e-4)
