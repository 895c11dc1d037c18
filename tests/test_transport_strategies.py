"""Aggregation strategies and key material over gRPC (in-process deployments on 127.0.0.1): the run file's
defaults hold in `secagg up`, loss-weighted rounds compute formula 2 without any party but the client seeing its
weight, packed BFV rounds match `secagg.simulate`, strategy state is checkpointed with the model, and a key holder
restarted with fresh keys costs one named, aborted round, never a wrong aggregate."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

import secagg
from secagg import errors as E
from secagg.roles import KEYHOLDER
from tests.fixtures.transport import capture_finalize
from training.engine.rules import GradientAggregation, LossWeighted
from training.config import RunConfig, load_config
from training.errors import ConfigError
from training.services import checkpoint
from training.services.pki.certs import Credentials
from training.deployment import TransportConfig, load_transport_config
from training.engine.roles import make_keyholder
from training.services.loopback import Deployment, FixedSource
from training.services.keyholder import serve_keyholder
from training.services.workloads.lm import run_config
from training.engine.terms import StrategyStep, encode_update
from training.services.workloads import SyntheticWorkload
from training.services.wire import StaleKeyError
from training.workload.client_update import ClientUpdate


def _data(n: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, dim) for _ in range(n)], [float(w) for w in rng.integers(1, 5, n)]


# ---- the run file's defaults -----------------------------------------------------------------------------------
def test_a_run_file_without_update_clip_gives_secagg_up_the_clip_of_secagg_run(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[federation]\nclients = 4\n[train]\nlocal_steps = 1\n')
    run, cfg = load_config(f), load_transport_config(f)
    assert cfg.clip == run.federation.update_clip == RunConfig().federation.update_clip
    assert TransportConfig().clip == RunConfig().federation.update_clip  # no file at all: the same default
    f_run = run.federation
    for name, value in [("scheme", f_run.scheme), ("rounds", run.train.rounds), ("aggregator", f_run.aggregator),
                        ("min_contributors", f_run.min_contributors), ("ckks_params", f_run.ckks_params),
                        ("ring_bits", f_run.ring_bits), ("seed", run.train.seed)]:
        assert getattr(cfg, name) == value, name
    # the local trainer clips to the deployment's clip, which a [transport] or file setting moves in both places
    assert run_config(str(f), cfg).federation.update_clip == cfg.clip
    f.write_text('[federation]\nclients = 4\nupdate_clip = 2.5\naggregator = "gradient"\n'
                 '[aggregator_options]\noptimizer = "adam"\nlr = 0.1\n')
    cfg = load_transport_config(f, scheme="masking")
    assert cfg.clip == 2.5 and cfg.scheme_options()["clip"] == 2.5
    assert cfg.aggregator == "gradient" and cfg.aggregator_options == {"optimizer": "adam", "lr": 0.1}
    run = run_config(str(f), cfg)
    assert (run.federation.update_clip, run.federation.aggregator, run.aggregator_options["lr"]) == (2.5, "gradient",
                                                                                                     0.1)


def test_async_buffers_size_the_cohort_and_bad_aggregator_options_are_refused_by_name():
    cfg = load_transport_config(None, aggregator="async", aggregator_options={"buffer_size": 2}, clients=5)
    assert cfg.cohort_size == 2 and cfg.min_cohort == 2
    assert load_transport_config(None, aggregator="async", aggregator_options={"buffer_size": 9}).cohort_size == 3
    with pytest.raises(ConfigError, match="buffer_size"):
        load_transport_config(None, aggregator="async", aggregator_options={"buffer_size": 0})
    with pytest.raises(ConfigError, match="loss-weighted"):
        load_transport_config(None, aggregator="loss-weighted", aggregator_options={"optimizer": "adam"})
    with pytest.raises(ConfigError, match="clip"):
        load_transport_config(None, clip=-1.0)


def test_up_refuses_an_unknown_aggregator_by_name(tmp_path):
    from typer.testing import CliRunner

    from training.errors import cli_app
    from training.services.cli import mount

    app = cli_app()  # what `secagg` mounts them on: named errors are one line and exit 2
    app.callback()(lambda: None)
    mount(app)
    result = CliRunner().invoke(app, ["up", "--aggregator", "median", "--out", str(tmp_path), "--trainer",
                                      "synthetic"])
    assert result.exit_code == 2 and "unknown aggregator 'median'" in result.output
    assert not (tmp_path / "certs").exists()  # refused before anything was started


# ---- loss-weighted (formula 2) -----------------------------------------------------------------------------------
def _formula_2(work: SyntheticWorkload, rounds: int, clip: float, margin: float = 4.0) -> tuple[np.ndarray, list]:
    """The loss-weighted trajectory computed directly: w += Σ e^{-(L_i - s)} Δ_i / Σ e^{-(L_i - s)}, with s the
    server's loss of the current model; also each round's secret weights and losses."""
    targets = [work.source(i).target for i in range(work.clients)]
    counts = [1 + i % 3 for i in range(work.clients)]
    optimum = sum(n * t for n, t in zip(counts, targets)) / sum(counts)
    m, secrets_ = np.zeros(work.dim), []
    for _ in range(rounds):
        s = float(np.mean((m - optimum) ** 2))
        losses = [float(np.mean((m - t) ** 2)) for t in targets]
        w = [float(np.exp(-max(loss - s, -margin))) for loss in losses]
        deltas = [np.clip(0.5 * (t - m), -clip, clip) for t in targets]
        m = m + sum(wi * d for wi, d in zip(w, deltas)) / sum(w)
        secrets_ += w + losses
    return m, secrets_


@pytest.mark.parametrize("scheme", ["ckks", "masking", "packed"])
def test_loss_weighted_over_grpc_is_formula_2_and_no_weight_reaches_the_aggregator(scheme):
    clip, dim = 2.0, 24
    work = SyntheticWorkload(dim, 3, seed=5, clip=clip, strategy=LossWeighted)
    sources = {i: work.source(i) for i in range(3)}
    seen: list[bytes] = []
    checkins: dict[int, float] = {}
    with Deployment(scheme, sources, dim, rounds=2, step=work.step(),
                    options={} if scheme == "ckks" else {"clip": clip}) as dep:
        coord = dep.coordinator
        send, checkin = coord.send, coord.checkin

        def spy_send(cid, round_id, payload, *report):
            seen.append(payload)
            return send(cid, round_id, payload, *report)

        def spy_checkin(cid, weight, *args, **kw):
            checkins[cid] = weight
            return checkin(cid, weight, *args, **kw)

        coord.send, coord.checkin = spy_send, spy_checkin
        records = dep.run(timeout=90)
        model = coord.state.model
    assert [r.status for r in records] == ["done", "done"], [r.reason for r in records]
    expected, hidden = _formula_2(work, 2, clip)
    assert np.allclose(model, expected, atol=5e-4 if scheme == "packed" else 1e-5)
    # a plain sample-weighted (FedAvg) step would differ: the test can tell the two rules apart
    srcs = list(sources.values())
    fedavg = sum(s.weight * s.update(np.zeros(dim), 0).delta for s in srcs) / sum(s.weight for s in srcs)
    assert not np.allclose(records[0].result.mean, fedavg, atol=1e-2)
    # checked in with the public sample counts only; no secret weight or loss appears in any message sent
    assert checkins == {i: sources[i].weight for i in range(3)}
    blob = b"".join(seen)
    for value in hidden:
        assert struct.pack("<d", value) not in blob and struct.pack("<f", value) not in blob


def test_a_client_refuses_a_round_that_switches_its_weights_between_public_and_private():
    update = ClientUpdate(0, np.ones(4), 3, 0.7)
    lw, grad = LossWeighted(), GradientAggregation()
    with pytest.raises(E.MalformedMessageError):  # an aggregator asking a private-weight client to go public
        encode_update(lw, update, 0, {"name": "loss-weighted", "private_weights": False})
    with pytest.raises(E.MalformedMessageError):
        encode_update(grad, update, 0, {"name": "fedavg", "private_weights": False})
    with pytest.raises(E.MalformedMessageError):
        encode_update(lw, update, 0, {"name": "loss-weighted", "private_weights": True, "loss_reference": "x"})
    c = encode_update(lw, update, 0, {"name": "loss-weighted", "private_weights": True, "loss_reference": 1.2})
    assert c.weight == pytest.approx(np.exp(-(0.7 - 1.2)))


# ---- packed BFV --------------------------------------------------------------------------------------------------
def test_packed_round_over_grpc_matches_simulate():
    updates, weights = _data(3, 30, seed=7)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    with Deployment("packed", sources, 30) as dep:
        records = dep.run(timeout=90)
    assert [r.status for r in records] == ["done"]
    res = records[0].result
    assert res.contributors == (0, 1, 2) and records[0].keyholder_bytes > 0
    reference = secagg.simulate(updates, weights, scheme="packed", seed=2)
    assert np.allclose(res.mean, reference, atol=1e-4)
    assert np.allclose(res.mean, sum(w * u for w, u in zip(weights, updates)) / sum(weights), atol=1e-4)


# ---- strategy state in the checkpoint ----------------------------------------------------------------------------
def test_adam_state_is_checkpointed_with_the_model_and_restored_into_a_fresh_strategy(tmp_path):
    path = tmp_path / "agg.ckpt"
    work = SyntheticWorkload(16, 3, seed=2, clip=1.0, strategy=lambda: GradientAggregation(lr=0.05,
                                                                                          optimizer="adam"))
    sources = {i: work.source(i) for i in range(3)}
    with Deployment("masking", sources, 16, rounds=2, step=work.step(), checkpoint_path=str(path)) as dep:
        dep.run(timeout=90)
        live = dep.coordinator.step.state_dict()
    saved = checkpoint.load(path)
    assert saved.round == 2 and sorted(saved.strategy) == ["m", "t", "v"] and int(saved.strategy["t"]) == 2
    assert all(np.array_equal(saved.strategy[k], live[k]) for k in live)
    fresh = StrategyStep(GradientAggregation(lr=0.05, optimizer="adam"))
    fresh.load_state_dict(saved.strategy)
    assert int(fresh.state_dict()["t"]) == 2 and np.array_equal(fresh.state_dict()["m"], live["m"])
    with pytest.raises(ConfigError):
        StrategyStep().load_state_dict(saved.strategy)  # FedAvg keeps no state: a mismatched checkpoint is refused


def test_a_failed_server_step_leaves_model_round_and_strategy_state_untouched(tmp_path):
    from secagg.roles import AggregateResult
    from training.services.coordinator import Coordinator, RoundPolicy
    from training.engine.rounds import Round
    from training.engine.roles import make_scheme

    path = tmp_path / "agg.ckpt"
    start = np.full(4, -1e308)  # finite, but one Adam step of lr 1e308 overflows it to -inf
    coord = Coordinator(make_scheme("masking", {"signed": False}), checkpoint.ServerState(start.copy()),
                        RoundPolicy(1, 2, 2), checkpoint_path=str(path),
                        step=StrategyStep(GradientAggregation(lr=1e308, optimizer="adam")))
    coord.state.next_round_id = 3  # as _open would have left it (write-ahead round ids)
    with pytest.raises(E.MalformedMessageError, match="not finite"), np.errstate(over="ignore"):
        coord.engine.commit(Round(1, 0, frozenset({0, 1}), None, {"params": {}}, {}),
                            AggregateResult(np.ones(4), 1.0, (0, 1)))
    assert coord.step.state_dict() == {} and coord.state.round == 0 and np.array_equal(coord.state.model, start)
    assert not path.exists()  # nothing was checkpointed
    coord.step.strategy.lr = 1e-3  # a sane step now commits model, round and the first moments together
    coord.state.model = np.zeros(4)
    coord.engine.commit(Round(2, 0, frozenset({0, 1}), None, {"params": {}}, {}),
                        AggregateResult(np.ones(4), 1.0, (0, 1)))
    coord.save()  # what the driver does with the engine's Persist effect
    saved = checkpoint.load(path)
    assert saved.round == 1 and int(saved.strategy["t"]) == 1 and np.allclose(saved.model, coord.state.model)


# ---- a key holder restarted with fresh keys ----------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_restarted_keyholder_costs_a_named_aborted_round_never_a_wrong_aggregate(scheme):
    updates, weights = _data(3, 10, seed=9)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    mean = sum(w * u for w, u in zip(weights, updates)) / sum(weights)
    with Deployment(scheme, sources, 10, rounds=2, stage_timeout=2.0, checkin_timeout=0.5) as dep:
        captured, fresh = [], []
        finalize = dep.coordinator.finalize

        def recording(round_id, payload):
            captured.append(payload)
            return finalize(round_id, payload)

        def restart(record):  # after round 1: the key holder process dies and comes back with new keys
            dep.records.append(record)
            if not fresh:
                dep.servers[0].stop(0).wait()
                fresh.append(make_keyholder(scheme, dep.scheme.options))
                server, _ = serve_keyholder(fresh[0], Credentials.load(dep.certs, KEYHOLDER), "127.0.0.1",
                                            dep.keyholder_port, max_message_bytes=dep.limit)
                dep.servers[0] = server

        dep.coordinator.finalize, dep.coordinator.on_round = recording, restart
        records = dep.run(timeout=120)
        # the first aggregate (made under the old key) handed to the new key holder: refused, never decrypted
        with pytest.raises(StaleKeyError):
            _refinalize(dep, captured[0])
        model = dep.coordinator.state.model
    statuses = [r.status for r in records]
    assert statuses[0] == "done" and statuses[-1] == "done" and statuses.count("done") == 2
    aborted = [r.reason for r in records if r.status == "aborted"]
    # clients still holding the old key cannot hand the new key holder their pad seeds (StaleKeyError there), so
    # the round may also end for want of contributions (DropoutError); either way nothing is decrypted
    assert all(r.split(":")[0] in ("StaleKeyError", "TransportError", "DropoutError") for r in aborted), aborted
    assert np.allclose(model, 2 * mean, atol=1e-4)  # two exact FedAvg steps: nothing wrong was ever applied
    assert fresh[0].finalized_rounds == {records[-1].round_id}  # the new key decrypted only the retried round


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_keyholder_service_never_decrypts_a_relabelled_aggregate(scheme):
    """Issue 10.6b over gRPC: an aggregate relabelled as a later round is refused (its pads were that round's and
    are consumed), and an earlier round id is refused outright; only each genuine round was ever decrypted."""
    updates, weights = _data(3, 10, seed=4)
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    with Deployment(scheme, sources, 10, rounds=2) as dep:
        captured = capture_finalize(dep)
        records = dep.run(timeout=60)
        assert [r.status for r in records] == ["done", "done"]
        with pytest.raises(E.VerificationError, match="no pad seed"):
            _refinalize(dep, captured[0][1])
        import dataclasses

        from secagg.messages import decode

        older = dataclasses.replace(decode(captured[1][1]), round_id=captured[0][0])
        with pytest.raises(E.WrongRoundError):
            dep.link.finalize(captured[0][0], older.to_bytes())


def _refinalize(dep: Deployment, payload: bytes) -> None:
    """Submit an old aggregate again under a new round id (the id inside must match, so patch both)."""
    import dataclasses

    from secagg.messages import decode

    msg = dataclasses.replace(decode(payload), round_id=10_000)
    dep.link.finalize(10_000, msg.to_bytes())


# ---- buffered asynchronous (formula 4) ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["masking", "ckks"])
def test_async_buffers_apply_formula_4_with_the_staleness_of_a_late_client(scheme, tmp_path):
    """K = 2 of 3 clients per buffer. Client 2 joins while round 1 runs, trains on version 0 and so enters round 2
    one version stale; every step must equal formula 4 computed directly from the recorded buffers."""
    from training.engine.rules import BufferedAsync

    dim, alpha = 12, 0.8
    work = SyntheticWorkload(dim, 3, seed=3, clip=1.0, strategy=lambda: BufferedAsync(buffer_size=2, alpha=alpha))
    sources = {i: work.source(i) for i in range(3)}
    path = tmp_path / "agg.ckpt"
    with Deployment(scheme, {0: sources[0], 1: sources[1]}, dim, rounds=4, step=work.step(), cert_clients=3,
                    checkpoint_path=str(path)) as dep:
        def on_task(header):  # round 1 cannot finish before client 2 waits with an update trained on version 0
            if header["round"] == 0 and 2 not in dep.agents:
                dep.agents[2] = dep.agent(2, sources[2])
                dep.start_agent(2)
                for _ in range(200):
                    if 2 in dep.coordinator.bases:
                        break
                    time.sleep(0.05)

        dep.agents[0].on_task = on_task
        records = dep.run(timeout=90)
        model = dep.coordinator.state.model
    assert [r.status for r in records] == ["done"] * 4, [r.reason for r in records]
    bases = [{int(c): b for c, b in r.terms["base_versions"].items()} for r in records]
    assert all(len(b) == 2 for b in bases) and bases[1].get(2) == 0  # client 2: one version stale in round 2
    history = [np.zeros(dim)]
    for version, members in enumerate(bases):  # w += (1/K) Σ α s(τ_i) (w_i − w), w_i = w^{base} + Δ_i
        w = history[-1]
        step = sum(alpha * (1 + version - b) ** -0.5 * (history[b] + np.clip(0.5 * (sources[c].target - history[b]),
                                                                              -1, 1) - w)
                   for c, b in members.items())
        history.append(w + step / len(members))
    assert np.allclose(model, history[-1], atol=1e-4)
    kept = checkpoint.load(path).strategy  # the published versions a resumed aggregator needs for staleness
    assert sorted(kept) == [f"v{v}" for v in range(5)] and np.allclose(kept["v4"], model)
