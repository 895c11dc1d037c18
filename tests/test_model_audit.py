"""A client refuses a global model that does not follow from the key holder's signed sums (issue 25.2).

Every driver gives its clients one :class:`~training.engine.audit.ModelAudit` (in-process: the federation's, gRPC:
the client agent's session, Flower: the node's session, sealed between messages). Here the aggregator's deviations
are run against it with real rounds: a model nudged by 1e-3, a proof carrying another round's release, a release
the aggregator re-signed, parameters changed after the fact, proofs left out; honest rounds of every rule pass.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from secagg.errors import AuthenticationError
from secagg.hazmat import sign as ed25519
from secagg.he_release import sign_release
from secagg.messages import decode
from training.engine.rules import make_strategy
from training.engine.audit import ModelAudit, UnverifiedModelError
from training.engine.terms import StrategyStep
from training.inprocess.federation import Federation
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate

DIM, N = 8, 3
RULES = {"fedavg": {}, "gradient": {"optimizer": "adam", "lr": 0.1}, "loss-weighted": {}}


def _federation(scheme: str, rule: str) -> Federation:
    secure = SecureSum(scheme, max_cohort=N) if scheme == "packed" else SecureSum(scheme)
    return Federation(np.zeros(DIM), make_strategy(rule, **RULES[rule]), secure, list(range(N)), update_clip=1.0)


def _round(fed: Federation, seed: int):
    rng = np.random.default_rng(seed)
    return fed.aggregate({c: ClientUpdate(c, rng.uniform(-0.5, 0.5, DIM), 10 + c, 1.0 + c, base_version=fed.version)
                          for c in range(N)})


LAGGARD = 99  # a client that verified version 0 and has been away since: the engine keeps the proofs it needs


@pytest.fixture(scope="module", params=[("ckks", r) for r in RULES] + [("packed", "fedavg")])
def honest(request):
    fed = _federation(*request.param)
    fed.engine.verified[LAGGARD] = 0
    for r in range(3):
        _round(fed, r)
    return fed


def test_the_engine_keeps_only_the_proofs_a_known_client_still_needs() -> None:
    """Every client verifies each model it trains on, so the proofs older than every known client's verified
    version are dropped (a release is 8 bytes per value); a client away since version v keeps steps v.. alive."""
    fed = _federation("ckks", "fedavg")
    for r in range(4):
        _round(fed, r)
    assert [p["round"] for p in fed.engine.state.proofs] == [2, 3]  # the clients verified version 2 at check-in
    assert fed.engine.state.verified == {str(c): 2 for c in range(N)}  # persisted with the state
    away = _federation("ckks", "fedavg")
    away.engine.verified[LAGGARD] = 1  # a client that verified version 1, then went away
    for r in range(4):
        _round(away, r)
    assert [p["round"] for p in away.engine.state.proofs] == [1, 2, 3]  # what it needs to catch up to version 4


def test_honest_rounds_of_every_rule_pass_every_clients_audit(honest) -> None:
    assert honest.version == 3
    assert {a.version for a in honest.audits.values()} == {2}  # checked the model of the third round's task
    assert len(honest.engine.state.proofs) == 3 and all(p["release"] for p in honest.engine.state.proofs)


def test_a_model_nudged_by_1e_3_is_refused_in_process() -> None:
    fed = _federation("ckks", "gradient")
    _round(fed, 0)
    _round(fed, 1)
    fed.engine.state.model = fed.engine.state.model + 1e-3  # the aggregator publishes a model of its own
    with pytest.raises(UnverifiedModelError):
        _round(fed, 2)


def _audit_at(fed: Federation, rule: str) -> ModelAudit:
    """A fresh client replica anchored at version 0 (the federation's start)."""
    audit = ModelAudit(fed.secure.roles, StrategyStep(make_strategy(rule, **RULES[rule])), np.zeros(DIM))
    audit.check(0, np.zeros(DIM), [], fed.secure.context)
    return audit


def _proofs(fed: Federation) -> list[dict]:
    return copy.deepcopy(fed.engine.state.proofs)


def test_the_replay_accepts_the_published_model_and_refuses_a_nudged_one(honest) -> None:
    rule = honest.strategy.name
    model = honest.global_vec.astype(np.float32)
    audit = _audit_at(honest, rule)
    with pytest.raises(UnverifiedModelError):
        audit.check(3, model + np.float32(1e-3), _proofs(honest), honest.secure.context)
    assert audit.version == 0  # a refused model leaves the replica where it was
    audit.check(3, model, _proofs(honest), honest.secure.context)
    assert audit.version == 3
    with pytest.raises(UnverifiedModelError):  # no going back
        audit.check(2, model, _proofs(honest), honest.secure.context)


def _release(p: dict):
    return decode(p["release"])


def _with_release(p: dict, msg) -> dict:
    return dict(p, release=msg.to_bytes())


def test_a_release_from_another_round_a_resigned_one_or_other_params_are_refused(honest) -> None:
    ctx, model = honest.secure.context, honest.global_vec.astype(np.float32)
    rule = honest.strategy.name
    foreign = _proofs(honest)
    foreign[1] = _with_release(foreign[1], _release(foreign[0]))  # round 0's genuine release offered for round 1
    own = ed25519.generate()
    resigned = _proofs(honest)
    msg = _release(resigned[2])
    bumped = msg.values.copy() if hasattr(msg, "values") else None
    if bumped is not None:
        bumped[0] += 1.0
        msg = dataclasses.replace(msg, values=bumped)
    resigned[2] = _with_release(resigned[2], sign_release(own, b"\0" * 32, dataclasses.replace(msg, signature=b"")))
    relabelled = _proofs(honest)
    relabelled[2]["params"] = dict(relabelled[2]["params"], cohort=[0, 1])  # a smaller cohort, after the fact
    for proofs in (foreign, resigned, relabelled):
        with pytest.raises(AuthenticationError):
            _audit_at(honest, rule).check(3, model, proofs, ctx)
    with pytest.raises(UnverifiedModelError):  # a step left out
        _audit_at(honest, rule).check(3, model, _proofs(honest)[:2], ctx)
    with pytest.raises(UnverifiedModelError):  # no bundle to check against
        _audit_at(honest, rule).check(3, model, _proofs(honest), None)


def test_a_flower_client_node_refuses_a_nudged_model() -> None:
    """The Flower ClientApp's node (state sealed between messages) runs real CKKS rounds with a key-holder node;
    the second round's model is nudged by the aggregator and the client refuses the task."""
    pytest.importorskip("flwr")
    from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
    from training.engine import RoundEngine, RoundPolicy, ServerState
    from training.engine.codec import model_bytes, proofs_out
    from training.engine.core import RoundDone, Task, ToKeyholder
    from training.flower.client import NodeProcess
    from training.flower.protocol import Trust, unpack
    from training.services.workloads import SyntheticWorkload

    trust = Trust.generate(N)
    settings = {"run": "t", "scheme": "ckks", "scheme_options": {"params": "default"}, "clients": N}
    node = NodeProcess(settings, trust, lambda: SyntheticWorkload(DIM, N, seed=1, clip=1.0))
    kh = NodeProcess(settings, trust, lambda: SyntheticWorkload(DIM, N, seed=1, clip=1.0))
    _, head, context, _ = unpack(kh.keyholder("context", {}, b"", []))
    asks = [Outbound(KEYHOLDER, unpack(node.client(c, "setup", head, context, []))[2]) for c in range(N)]
    _, _, _, grants = unpack(kh.keyholder("grant", {"senders": [AGGREGATOR] * N}, b"", asks))
    for g in grants:
        node.client(g.to, "tagkey", {}, g.payload, [])
    eng = RoundEngine(node.scheme, ServerState(np.zeros(DIM)), RoundPolicy(3, N, N), context=context,
                      step=node.work()[0].step())

    def one_round(now: float) -> None:
        for c in range(N):
            _, checkin, _, _ = unpack(node.client(c, "checkin", {}, b"", []))
            eng.checkin(c, checkin["weight"], now, verified=checkin.get("verified"))
        eng.tick(now)
        for task in [e for e in eng.drain() if isinstance(e, Task)]:
            heads, releases = proofs_out(task.header.get("proofs", []))  # as the Flower server sends them
            _, _, _, outs = unpack(node.client(task.cid, "task", {**task.header, "proofs": heads},
                                               b"".join([*releases, model_bytes(task.model)]), []))
            kh.keyholder("seed", {"senders": [task.cid]}, b"", [o for o in outs if o.to == KEYHOLDER])
            for o in outs:
                if o.to == AGGREGATOR:
                    eng.deliver(task.cid, task.round_id, o.payload, now)
        for e in eng.drain():
            if isinstance(e, ToKeyholder):
                _, _, _, back = unpack(kh.keyholder("finalize", {"round_id": e.round_id}, e.payload, []))
                eng.keyholder_reply(e.round_id, back, now)
        assert any(isinstance(e, RoundDone) and e.error is None for e in eng.drain())

    one_round(0.0)
    one_round(1.0)
    assert node.sessions[0].audit.version == 1
    eng.state.model = eng.state.model + 1e-3
    for c in range(N):
        _, checkin, _, _ = unpack(node.client(c, "checkin", {}, b"", []))
        eng.checkin(c, checkin["weight"], 2.0, verified=checkin.get("verified"))
    eng.tick(2.0)
    task = next(e for e in eng.drain() if isinstance(e, Task))
    heads, releases = proofs_out(task.header.get("proofs", []))
    with pytest.raises(UnverifiedModelError):
        node.client(task.cid, "task", {**task.header, "proofs": heads}, b"".join([*releases, model_bytes(task.model)]),
                    [])


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_an_async_client_refuses_a_nudged_model_it_fetches_between_buffers(scheme) -> None:
    import torch

    from training.inprocess.session import FederatedSession

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    options = {"max_cohort": N} if scheme == "packed" else None
    fed = FederatedSession(model, clients=N, scheme=scheme, aggregator="async", update_clip=1.0,
                           secure_options=options, aggregator_options={"buffer_size": 2})
    for c in (0, 1):  # one buffer: version 1, applied by the aggregator
        with fed.client(c).round(model) as r:
            with torch.no_grad():
                model.weight += 0.1 * (c + 1)
            r.report(num_samples=10, loss=1.0)
    assert fed.federation.version == 1
    assert fed.federation.model_for(2)[1] == 1  # the honest model passes client 2's own audit
    fed.federation.engine.state.model = fed.federation.engine.state.model + 1e-3  # a model of its own
    with pytest.raises(UnverifiedModelError), fed.client(0).round(model):
        pass  # client 0 fetches the model to train from: refused before any training
    fed.federation.engine.state.proofs = []  # and a model it cannot prove
    with pytest.raises(UnverifiedModelError):
        fed.federation.model_for(2)
