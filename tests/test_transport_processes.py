"""Every role as its own OS process on 127.0.0.1 (ephemeral ports, short deadlines): the `up` demo, a client
that crashes mid-protocol and rejoins, and an aggregator killed between rounds and resumed from its checkpoint.
Every child runs in its own process group and is killed in ``finally`` by the Procs fixture."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from training.services import checkpoint
from training.services.pki.certs import init_certs
from training.deployment import TransportConfig
from training.services.launcher import Procs, launch
from training.services.node import read_port_file
from training.services.workloads import SyntheticWorkload

DIM = 32


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path / "logs")
    try:
        yield p
    finally:
        p.close()


def _config(tmp_path: Path, **kw) -> tuple[TransportConfig, Path]:
    settings = dict(scheme="masking", trainer="synthetic", clients=3, rounds=2, dim=DIM, certs=str(tmp_path / "certs"),
                    out=str(tmp_path), stage_timeout=1.5, checkin_timeout=8.0, poll_seconds=1.0) | kw
    cfg = TransportConfig(**settings)
    init_certs(cfg.certs, cfg.clients)
    path = tmp_path / "transport.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg.validate())))
    return cfg, path


def _rows(tmp_path: Path) -> list[dict]:
    f = tmp_path / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _expected_model(cfg: TransportConfig, cohorts: list[list[int]]) -> np.ndarray:
    """The synthetic trajectory computed directly from the clients' targets (independent of the transport)."""
    work = SyntheticWorkload(cfg.dim, cfg.clients, seed=cfg.seed, clip=cfg.clip)
    srcs = {i: work.source(i) for i in range(cfg.clients)}
    m = work.initial_model()
    for ids in cohorts:
        m = m + sum(srcs[i].weight * srcs[i].compute(m, 0) for i in ids) / sum(srcs[i].weight for i in ids)
    return m


def _start_aggregator(procs: Procs, tmp_path: Path, resolved: Path, port: int = 0, name: str = "aggregator",
                      *extra: str):
    pf = tmp_path / f"{name}.port"
    pf.unlink(missing_ok=True)
    proc = procs.start(name, ["aggregator", "serve", "--resolved", str(resolved), "--port", str(port),
                              "--port-file", str(pf), "--checkpoint", str(tmp_path / "agg.ckpt"), *extra])
    return proc, read_port_file(pf, 60, lambda: proc.poll() is None)


def _start_client(procs: Procs, resolved: Path, cid: int, port: int, name: str | None = None, *extra: str):
    return procs.start(name or f"client-{cid}", ["client", "run", "--id", str(cid), "--resolved", str(resolved),
                                                 "--aggregator", f"127.0.0.1:{port}", *extra])


@pytest.mark.parametrize("scheme", ["masking", "ckks", "packed"])
def test_up_runs_every_role_as_a_process(tmp_path, scheme):
    import secagg

    cfg = TransportConfig(scheme=scheme, trainer="synthetic", clients=3, rounds=2, dim=DIM, out=str(tmp_path),
                          certs=str(tmp_path / "certs"), stage_timeout=5.0, checkin_timeout=8.0, poll_seconds=1.0)
    lines: list[str] = []
    rows = launch(cfg.validate(), timeout=120, echo=lines.append)
    assert [r["status"] for r in rows] == ["done", "done"], "\n".join(lines)
    assert [r["contributors"] for r in rows] == [[0, 1, 2], [0, 1, 2]]
    assert (rows[0]["keyholder_bytes"] > 0) == (scheme != "masking")
    assert rows[1]["loss"] < rows[0]["loss"]
    state = checkpoint.load(tmp_path / "aggregator.ckpt")
    assert state.round == 2
    expected = _expected_model(cfg, [[0, 1, 2]] * 2)
    assert np.allclose(state.model, expected, atol=1e-4)
    # the first step from the zero model is the weighted mean of the first updates: as secagg.simulate computes it
    work = SyntheticWorkload(cfg.dim, cfg.clients, seed=cfg.seed, clip=cfg.clip)
    first = [work.source(i).compute(np.zeros(DIM), 0) for i in range(3)]
    step = secagg.simulate(first, [work.source(i).weight for i in range(3)], scheme=scheme, seed=1,
                           **({} if scheme == "ckks" else {"clip": cfg.clip}))
    assert np.allclose(_expected_model(cfg, [[0, 1, 2]]), step, atol=1e-4)
    assert all("round" in line or "up:" in line for line in lines)


def test_up_sends_proofs_larger_than_a_header_in_the_body(tmp_path):
    """CKKS over `secagg up` at a size whose signed release (8 bytes per value) exceeds the 1 MiB envelope header:
    the second round's tasks carry the first step's proof for every client's audit. The releases travel as bytes
    in the body (they used to be base64 in the JSON header, and the aggregator failed the round's tasks)."""
    dim = 150_000
    cfg = TransportConfig(scheme="ckks", trainer="synthetic", clients=3, rounds=2, dim=dim, out=str(tmp_path),
                          certs=str(tmp_path / "certs"), stage_timeout=30.0, checkin_timeout=8.0, poll_seconds=1.0)
    lines: list[str] = []
    rows = launch(cfg.validate(), timeout=240, echo=lines.append)
    assert [r["status"] for r in rows] == ["done", "done"], "\n".join(lines)
    assert rows[1]["bytes_down"] > 3 * 8 * dim  # every client got the model and the 8-byte-per-value release
    state = checkpoint.load(tmp_path / "aggregator.ckpt")
    assert state.round == 2 and [p["round"] for p in state.proofs] == [1]  # every client verified version 1
    assert all(isinstance(p["release"], bytes) and len(p["release"]) > 8 * dim for p in state.proofs)


def test_client_crashing_mid_protocol_drops_out_and_rejoins_next_round(tmp_path, procs):
    cfg, resolved = _config(tmp_path)
    agg, port = _start_aggregator(procs, tmp_path, resolved)
    for cid in (0, 1):
        _start_client(procs, resolved, cid, port)
    # exits after its key advertisement and shares (before its masked input): at n = 3 a client lost between the
    # two would take its neighbours' share deliveries below what they accept (share_dropouts = 0 keeps t - e - C
    # at 2 honest inputs), so that round would fail and be retried instead
    crashing = _start_client(procs, resolved, 2, port, "client-2-crash", "--exit-after", "2")
    _wait(lambda: crashing.poll() is not None, 60, "the injected crash")
    assert crashing.returncode == 17
    _start_client(procs, resolved, 2, port)  # restarted: must wait for the next round
    _wait(lambda: agg.poll() is not None, 90, "the aggregator to finish")
    rows = [r for r in _rows(tmp_path) if r["status"] == "done"]
    assert len(rows) == 2
    assert rows[0]["contributors"] == [0, 1] and 2 in rows[0]["dropped"]
    assert rows[1]["contributors"] == [0, 1, 2]
    state = checkpoint.load(tmp_path / "agg.ckpt")
    assert state.round == 2
    assert np.allclose(state.model, _expected_model(cfg, [[0, 1], [0, 1, 2]]), atol=1e-4)


def test_aggregator_killed_between_rounds_and_mid_round_resumes_without_loss_or_double_apply(tmp_path, procs):
    cfg, resolved = _config(tmp_path, rounds=3)
    # (1) the aggregator dies abruptly (os._exit: no cleanup) right after round 1 is applied and checkpointed
    agg, port = _start_aggregator(procs, tmp_path, resolved, 0, "aggregator", "--exit-after-rounds", "1")
    for cid in (0, 1):
        _start_client(procs, resolved, cid, port)
    # client 2 takes part in round 1 (5 messages), advertises its keys in round 2, then dies: round 2 then waits
    # for its shares until the stage deadline, and the second aggregator is SIGKILLed inside that window
    crashing = _start_client(procs, resolved, 2, port, "client-2-crash", "--exit-after", "6")
    _wait(lambda: agg.poll() is not None, 60, "the injected aggregator crash")
    assert agg.returncode == 9
    between = checkpoint.load(tmp_path / "agg.ckpt")
    assert between.round == 1
    # (2) a second aggregator resumes on the same port; the clients reconnect by themselves
    agg2, port2 = _start_aggregator(procs, tmp_path, resolved, port, "aggregator-2")
    assert port2 == port
    _wait(lambda: crashing.poll() is not None, 60, "client 2's injected crash in round 2")
    assert crashing.returncode == 17
    procs.kill("aggregator-2")  # SIGKILL, mid-round
    assert agg2.returncode == -9
    log = (tmp_path / "logs" / "aggregator-2.log").read_text()
    killed_id = int(log.split("round 1 (id ")[1].split(")")[0])
    killed = checkpoint.load(tmp_path / "agg.ckpt")
    assert killed.round == 1 and killed.next_round_id == killed_id + 1  # written ahead when round 2 opened
    assert killed_id >= between.next_round_id
    # (3) the crashed client restarts, a third aggregator resumes, and the federation finishes
    _start_client(procs, resolved, 2, port)
    agg3, _ = _start_aggregator(procs, tmp_path, resolved, port, "aggregator-3")
    _wait(lambda: agg3.poll() is not None, 90, "the resumed aggregator to finish")
    assert agg3.returncode == 0
    rows = _rows(tmp_path)
    done = [r for r in rows if r["status"] == "done"]
    assert [r["round"] for r in done] == [1, 2, 3]  # every round applied exactly once
    ids = [r["round_id"] for r in rows]
    assert ids == sorted(set(ids)) and killed_id not in ids and min(ids[1:]) > killed_id
    assert all(r["contributors"] == [0, 1, 2] for r in done)  # the restarted client 2 rejoined
    state = checkpoint.load(tmp_path / "agg.ckpt")
    assert state.round == 3 and state.next_round_id > killed.next_round_id
    assert np.allclose(state.model, _expected_model(cfg, [[0, 1, 2]] * 3), atol=1e-4)


def _adam_trajectory(cfg: TransportConfig, rounds: int, restart_at: int | None = None, lr: float = 0.05,
                     betas=(0.9, 0.99), eps: float = 1e-3) -> np.ndarray:
    """Server Adam on the sample-weighted mean pseudo-gradient, computed directly from the clients' targets;
    ``restart_at``: the moments are lost (reset) after that many rounds, as a resume without them would do."""
    work = SyntheticWorkload(cfg.dim, cfg.clients, seed=cfg.seed, clip=cfg.clip)
    srcs = [work.source(i) for i in range(cfg.clients)]
    m = work.initial_model()
    mom, vel, t = np.zeros_like(m), np.zeros_like(m), 0
    for r in range(rounds):
        if r == restart_at:
            mom, vel, t = np.zeros_like(m), np.zeros_like(m), 0
        g = -sum(s.weight * np.clip(0.5 * (s.target - m), -cfg.clip, cfg.clip) for s in srcs) / sum(
            s.weight for s in srcs)
        t += 1
        mom, vel = betas[0] * mom + (1 - betas[0]) * g, betas[1] * vel + (1 - betas[1]) * g * g
        m = m - lr * (mom / (1 - betas[0] ** t)) / (np.sqrt(vel / (1 - betas[1] ** t)) + eps)
    return m


def test_killed_aggregator_resumes_server_adam_exactly_as_an_uninterrupted_run(tmp_path, procs):
    cfg, resolved = _config(tmp_path, rounds=4, aggregator="gradient",
                            aggregator_options={"optimizer": "adam", "lr": 0.05})
    agg, port = _start_aggregator(procs, tmp_path, resolved, 0, "aggregator", "--exit-after-rounds", "2")
    for cid in range(3):
        _start_client(procs, resolved, cid, port)
    _wait(lambda: agg.poll() is not None, 60, "the injected aggregator crash")
    assert agg.returncode == 9
    between = checkpoint.load(tmp_path / "agg.ckpt")
    assert between.round == 2 and int(between.strategy["t"]) == 2  # the moments are on disk with the model
    agg2, _ = _start_aggregator(procs, tmp_path, resolved, port, "aggregator-2")
    _wait(lambda: agg2.poll() is not None, 60, "the resumed aggregator to finish")
    assert agg2.returncode == 0
    done = [r for r in _rows(tmp_path) if r["status"] == "done"]
    assert [r["round"] for r in done] == [1, 2, 3, 4] and all(r["contributors"] == [0, 1, 2] for r in done)
    state = checkpoint.load(tmp_path / "agg.ckpt")
    assert state.round == 4 and int(state.strategy["t"]) == 4
    uninterrupted = _adam_trajectory(cfg, 4)
    assert np.allclose(state.model, uninterrupted, atol=1e-4)
    # losing the moments at the restart would have led elsewhere: the comparison can fail
    assert np.max(np.abs(_adam_trajectory(cfg, 4, restart_at=2) - uninterrupted)) > 1e-2


def test_keyholder_process_restarted_with_new_keys_costs_one_named_abort(tmp_path, procs):
    """The CKKS key holder dies after the aggregator fetched its context and comes back (same port) with a fresh
    key. The first round names the dead key's context: clients get only the new one and refuse it by name, the round
    is aborted, the aggregator re-fetches the context, and every later round is exact under the new key."""
    cfg, resolved = _config(tmp_path, scheme="ckks", rounds=2, min_clients=3)
    pf = tmp_path / "keyholder.port"
    kh = procs.start("keyholder", ["keyholder", "serve", "--resolved", str(resolved), "--port-file", str(pf)])
    kport = read_port_file(pf, 60, lambda: kh.poll() is None)
    agg, port = _start_aggregator(procs, tmp_path, resolved, 0, "aggregator", "--keyholder", f"127.0.0.1:{kport}")
    for cid in (0, 1):  # no round opens before all three clients wait (min_clients = 3)
        _start_client(procs, resolved, cid, port, None, "--keyholder", f"127.0.0.1:{kport}")
    procs.kill("keyholder")
    pf.unlink()
    kh2 = procs.start("keyholder-2", ["keyholder", "serve", "--resolved", str(resolved), "--port", str(kport),
                                      "--port-file", str(pf)])
    assert read_port_file(pf, 60, lambda: kh2.poll() is None) == kport
    _start_client(procs, resolved, 2, port, None, "--keyholder", f"127.0.0.1:{kport}")
    _wait(lambda: agg.poll() is not None, 90, "the aggregator to finish")
    assert agg.returncode == 0
    rows = _rows(tmp_path)
    aborted, done = [r for r in rows if r["status"] == "aborted"], [r for r in rows if r["status"] == "done"]
    assert aborted and all(r["reason"].split(":")[0] in ("DropoutError", "StaleKeyError") for r in aborted), rows
    assert rows[0]["status"] == "aborted" and [r["round"] for r in done] == [1, 2]
    logs = "".join((tmp_path / "logs" / f"client-{i}.log").read_text() for i in range(3))
    assert "StaleKeyError" in logs  # the clients' refusal of the context the first round named
    state = checkpoint.load(tmp_path / "agg.ckpt")
    assert np.allclose(state.model, _expected_model(cfg, [[0, 1, 2]] * 2), atol=1e-4)


RUN_TOML = """
[data]
n_documents = 3
vocab_size = 512
block_size = 32
max_blocks_per_client = 24
max_val_blocks = 8

[model]
n_layer = 1
n_embd = 32
n_head = 2

[train]
rounds = 5
local_steps = 2
batch_size = 8

[federation]
clients = 5
scheme = "masking"
aggregator = "loss-weighted"
update_clip = 1.0

[dp]
enabled = true
noise_multiplier = 1.0

[transport]
trainer = "local"
stage_timeout = 30.0
checkin_timeout = 120.0
"""


def test_secagg_up_trains_a_real_model_with_every_role_a_process(tmp_path):
    """`secagg up --clients 3 --rounds 2` through the mounted CLI: a tiny GPT-2 with DP-SGD in every client process,
    loss-weighted masking over gRPC (secret weights e^{-(L-s)} in the masked lanes, s the aggregator's validation
    loss); the flags override the run file's clients/rounds; ledgers compose every client's events."""
    import typer
    from typer.testing import CliRunner

    from tests.independent import pld_epsilon
    from privacy.durable import read_ledgers
    from privacy.events import PrivacyEvent
    from privacy.ledger import PrivacyLedger
    from training.services.cli import mount

    run = tmp_path / "run.toml"
    run.write_text(RUN_TOML)
    app = typer.Typer()
    app.callback()(lambda: None)
    mount(app)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["up", "--clients", "3", "--rounds", "2", "--config", str(run),
                                      "--out", str(out), "--timeout", "240"])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert [(r["round"], r["status"], r["contributors"]) for r in rows] == [(1, "done", [0, 1, 2]),
                                                                           (2, "done", [0, 1, 2])]
    assert all(np.isfinite(r["loss"]) and r["bytes_up"] > 0 for r in rows)
    state = checkpoint.load(out / "aggregator.ckpt")
    assert state.round == 2 and state.model.size > 10_000  # the tiny GPT-2's trainable parameters
    assert "cohort_loss" in state.strategy  # the loss-weighted server state went into the checkpoint
    assert sorted(state.ledgers) == ["0", "1", "2"]
    own = {r["client"]: r for r in read_ledgers(out)}  # each client's durable ledger, on its side, in OUT/ledger
    assert sorted(own) == ["client-0", "client-1", "client-2"]
    for cid, raw in state.ledgers.items():  # two local trainings each, reported once each: their steps and, since
        ledger = PrivacyLedger.from_json(json.dumps(raw))  # the rule is loss-weighted, a 4-batch DP loss release
        assert ledger.events == (PrivacyEvent(1.0, 1 / 3, 2), PrivacyEvent(2.0, 1 / 3, 4)) * 2
        assert ledger.relation == "replace-one"  # the example counts are public at check-in
        ref = pld_epsilon(ledger.events, 1e-5, relation="replace-one")  # dp_accounting directly, event by event
        assert ref - 1e-3 <= ledger.spent() <= ref * 1.01
        assert own[f"client-{cid}"]["epsilon"] == pytest.approx(ledger.spent(), rel=1e-9)
        assert own[f"client-{cid}"]["releases"] == 2
        # each round's row already counts that round's training (reported with the round's first message)
        for k, row in enumerate(rows, start=1):
            want = pld_epsilon(ledger.events[:2 * k], 1e-5, relation="replace-one")
            assert want - 1e-3 <= row["epsilon_per_client"][cid] <= want * 1.01, (k, row["epsilon_per_client"])


def test_secagg_up_twice_continues_each_clients_budget_and_refuses_before_releasing(tmp_path):
    """`secagg up --out D` twice with a budget the first run nearly spends: the second run's clients check the
    round against their durable ledgers in D/ledger, refuse before any release and withdraw; the federation
    stops cleanly (exit 3) with no update received; `secagg budget show D --json` carries each ε, <= budget."""
    import typer
    from typer.testing import CliRunner

    from privacy.accounting import epsilon
    from training.ledgers import mount as mount_budget
    from training.services.cli import mount

    q = 8 / 24
    e2, e3 = (epsilon(1.0, q, 2 * k, 1e-5, relation="replace-one") for k in (2, 3))
    run = tmp_path / "run.toml"
    run.write_text(RUN_TOML.replace('"loss-weighted"', '"fedavg"')
                   .replace("noise_multiplier = 1.0\n", f"noise_multiplier = 1.0\nepsilon_budget = {(e2 + e3) / 2}\n")
                   .replace("checkin_timeout = 120.0", "checkin_timeout = 20.0"))
    app = typer.Typer()
    app.callback()(lambda: None)
    mount(app)
    mount_budget(app)
    out, args = tmp_path / "out", ["--clients", "3", "--rounds", "2", "--config", str(run), "--timeout", "240"]
    first = CliRunner().invoke(app, ["up", *args, "--out", str(out)])
    assert first.exit_code == 0, first.output
    shown = CliRunner().invoke(app, ["budget", "show", str(out), "--json"])
    before = {r["client"]: r for r in map(json.loads, shown.output.splitlines())}
    assert sorted(before) == ["client-0", "client-1", "client-2"]
    assert all(r["epsilon"] == pytest.approx(e2, rel=1e-6) and r["releases"] == 2 for r in before.values())
    logs = [(out / "logs" / f"client-{i}.log").read_text() for i in range(3)]  # the logs are appended to
    second = CliRunner().invoke(app, ["up", *args, "--out", str(out)])
    assert second.exit_code == 3, second.output
    assert "the federation stopped" in second.output and "BudgetExceededError" in second.output
    assert _rows(out) == []  # no round: the aggregator received no update
    state = checkpoint.load(out / "aggregator.ckpt")
    assert state.round == 0 and state.ledgers == {}  # and no privacy report: nothing was released
    new = "".join((out / "logs" / f"client-{i}.log").read_text()[len(logs[i]):] for i in range(3))
    assert new.count("withdrew: BudgetExceededError: spent ε=") == 3 and f"budget ε={(e2 + e3) / 2:.4g}" in new
    after = CliRunner().invoke(app, ["budget", "show", str(out), "--json"])
    rows = [json.loads(x) for x in after.output.splitlines()]
    assert {r["client"]: (r["epsilon"], r["releases"]) for r in rows} == \
        {c: (r["epsilon"], r["releases"]) for c, r in before.items()}  # carried over, nothing added
    assert all(r["epsilon"] <= r["budget"] == pytest.approx((e2 + e3) / 2) for r in rows)
    text = CliRunner().invoke(app, ["budget", "show", str(out / "ledger" / "client-0.json")]).output
    assert text.startswith("client-0: ε=") and "replace-one" in text
