"""The deployed Flower apps, without processes: a grid that hands every message to the ClientApp handler with a
fresh process's memory (nothing kept but each node's ``context.state``), so every masking key, share and the
key holder's secret context must survive sealed in the node state. Same model as in-process; a tampered or
swapped node state is refused, never used."""

from __future__ import annotations

import tempfile
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402

from secagg.errors import AuthenticationError  # noqa: E402
from tests.test_engine_parity import DIM, N, _in_process  # noqa: E402
from training.engine.rules import FedAvg  # noqa: E402
from training.errors import ConfigError  # noqa: E402
from training.flower import client as flower_client  # noqa: E402
from training.flower.deploy import client_app, config_of  # noqa: E402
from training.flower.protocol import Trust  # noqa: E402
from training.flower.server import FlowerAggregator  # noqa: E402
from training.flower.sim import settings_of  # noqa: E402
from training.services.pki.certs import init_certs  # noqa: E402
from training.services.workloads import make_workload  # noqa: E402

pytestmark = pytest.mark.xdist_group("flower-deploy")  # no Ray: beside the simulation tests


class FreshProcessGrid:
    """Node i answers through the deployed ClientApp; module memory is wiped before every message."""

    def __init__(self, run_config: dict, certs: str, nodes: dict[int, dict], run_id: int = 42) -> None:
        self.app = client_app()
        self.contexts = {nid: Context(run_id=run_id, node_id=nid, node_config=cfg | {"certs": certs},
                                      state=RecordDict(), run_config=run_config) for nid, cfg in nodes.items()}
        self.tamper = None

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        """Each message answered at once (the replies wait for :meth:`pull_messages`, as in a SuperLink)."""
        self.replies, ids = getattr(self, "replies", {}), []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # what a SuperLink's push does
            flower_client._WORK.clear()  # a fresh flwr-clientapp process per message
            ctx = self.contexts[msg.metadata.dst_node_id]
            if self.tamper is not None:
                self.tamper(ctx)
            self.replies[msg.metadata.message_id] = self.app(message=msg, context=ctx)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def _run(tmp_path, scheme: str, tamper=None, dim: int = DIM):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, 1, 1  # what flwr-serverapp sets
    certs = str(init_certs(tmp_path / "certs", N))
    rc = {"scheme": scheme, "clients": N, "rounds": 2, "trainer": "synthetic", "dim": dim, "seed": 7, "clip": 1.0,
          "rounding": "deterministic", "aggregator": "fedavg"}
    pins = {"scheme": scheme, "clients": N}  # each node operator's own choice
    nodes = {100 + c: {"client-id": c} | pins for c in range(N)} | {200: {"role": "keyholder"} | pins}
    grid = FreshProcessGrid(rc, certs, nodes)
    cfg = config_of(rc)
    agg = FlowerAggregator(grid, settings_of(cfg) | {"run": "flower-run-42"}, Trust.from_certs(certs, N),
                           make_workload(cfg), timeout=5)
    grid.tamper = tamper
    return agg, grid


@pytest.mark.parametrize("scheme", ["masking", "ckks"])
def test_deployed_apps_with_a_fresh_process_per_message_give_the_in_process_model(tmp_path, scheme):
    agg, grid = _run(tmp_path, scheme)
    rows = agg.run()
    assert [r.status for r in rows] == ["done", "done"] and all(r.contributors == [0, 1, 2] for r in rows)
    local = _in_process(scheme, FedAvg(), [{c: r for c in range(N)} for r in range(2)])
    if scheme == "masking":
        assert np.array_equal(agg.engine.state.model, local)
    else:
        np.testing.assert_allclose(agg.engine.state.model, local, atol=1e-5, rtol=0)
    used = [n for n in grid.contexts if n != 200 or scheme == "ckks"]
    assert all("secagg" in grid.contexts[n].state for n in used)  # every party's state lived only sealed there


STREAMED = 2 * 65536 + 10  # three masking parts of one 64 Ki-value chunk


def _spooled(monkeypatch, tmp_path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(flower_client, "PART_CHUNKS", 1)  # each client's own part size
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where a node spools by default
    return spool


def test_a_fresh_process_serves_the_spooled_parts_and_the_model_is_the_in_process_one(tmp_path, monkeypatch):
    """A streamed contribution across fresh processes: the parts after the first are on the client's disk and
    each ``part`` request is answered by a new process from the sealed spool record."""
    spool = _spooled(monkeypatch, tmp_path)
    agg, grid = _run(tmp_path, "masking", dim=STREAMED)
    rows = agg.run()
    assert [r.status for r in rows] == ["done", "done"] and agg.parts == 2 * N * 2
    local = _in_process("masking", FedAvg(), [{c: r for c in range(N)} for r in range(2)], dim=STREAMED)
    assert np.array_equal(agg.engine.state.model, local)
    assert not list(spool.iterdir())  # every round's spool removed at its end


def test_a_spooled_part_is_served_only_as_written_and_in_order(tmp_path):
    from secagg.errors import StageError
    from secagg.snapshot import SnapshotError
    from training.flower.spool import Spool

    parts = [bytes([i]) * (10 + i) for i in range(4)]
    spool = Spool.write(tmp_path, "run-c0", 5, iter(parts))
    assert spool is not None and spool.total == 5 and Spool.write(tmp_path, "x", 5, iter([])) is None
    with pytest.raises(StageError):
        spool.read(2)  # part 1 is next
    assert spool.read(1) == parts[0] and spool.read(1) == parts[0]  # a repeated request (lost reply): same bytes
    data = bytearray(Path(spool.path).read_bytes())
    data[len(parts[0])] ^= 1  # the first byte of part 2, changed on disk
    Path(spool.path).write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="not what this client wrote"):
        spool.read(2)
    Path(spool.path).write_bytes(b"".join(parts)[:-1])  # truncated
    spool.served = 3
    with pytest.raises(SnapshotError):
        spool.read(4)
    spool.remove()
    with pytest.raises(SnapshotError, match="gone"):
        spool.read(4)


def test_a_swapped_node_state_is_refused_not_used(tmp_path):
    """A client's sealed state copied into another node (or run) does not open: that node refuses, the round
    goes on without it or fails closed; no secret of one party is ever used as another's."""
    agg, grid = _run(tmp_path, "masking")
    refusals = []
    real = flower_client.NodeProcess.restore

    def spy(self, state, key, aad):
        try:
            return real(self, state, key, aad)
        except Exception as exc:
            refusals.append(type(exc).__name__)
            raise

    def swap(ctx):
        if ctx.node_id == 101 and "secagg" in grid.contexts[100].state:
            ctx.state["secagg"] = grid.contexts[100].state["secagg"]

    grid.tamper = swap
    flower_client.NodeProcess.restore = spy
    try:
        with pytest.raises(AuthenticationError, match="expected 3 clients"):
            agg.run()
    finally:
        flower_client.NodeProcess.restore = real
    assert refusals and set(refusals) == {"SnapshotError"}


def test_node_with_the_wrong_signing_key_is_refused(tmp_path):
    certs = init_certs(tmp_path / "certs", N)
    (certs / "client-1.sign.key").write_bytes((certs / "client-0.sign.key").read_bytes())
    with pytest.raises(AuthenticationError, match="not client-1's certified key"):
        Trust.from_certs(str(certs), N, own=1)


def test_a_node_refuses_a_run_config_that_differs_from_its_pins(tmp_path, caplog):
    """The run config comes through the untrusted SuperLink: a server that asks pinned nodes for a weaker
    scheme (unsigned-by-default masking instead of CKKS, or a smaller federation) is refused by every node."""
    agg, grid = _run(tmp_path, "ckks")
    for ctx in grid.contexts.values():
        ctx.run_config = dict(ctx.run_config) | {"scheme": "masking"}
    with pytest.raises(AuthenticationError, match="expected 3 clients"):
        agg.run()
    assert "AuthenticationError" in caplog.text and "run config asks for" in caplog.text
    with pytest.raises(ConfigError, match="pins"):
        config_of({"scheme": "ckks", "clients": 3}, {"client-id": 0})


def _lm_federation(tmp_path, run, scheme: str):
    """A 2-round Flower federation of the LM workload of run file ``run``, every node a fresh process per
    message (and a key holder node for the HE schemes): (aggregator, grid, transport config, certs)."""
    from flwr.supercore.task_identity import TaskIdentity

    certs = str(init_certs(tmp_path / "certs", N))
    rc = {"scheme": scheme, "clients": N, "rounds": 2, "trainer": "local", "config": str(run)}
    pins = {"scheme": scheme, "clients": N, "config": str(run)}
    nodes = {100 + c: {"client-id": c} | pins for c in range(N)}
    grid = FreshProcessGrid(rc, certs, nodes if scheme == "masking" else nodes | {200: {"role": "keyholder"} | pins})
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, 1, 1
    cfg = config_of(rc)
    agg = FlowerAggregator(grid, settings_of(cfg) | {"run": "flower-run-42"}, Trust.from_certs(certs, N),
                           make_workload(cfg), timeout=5)
    return agg, grid, cfg, certs


def test_lm_clients_carry_their_dp_ledger_across_fresh_processes(tmp_path):
    """A DP language-model client in a fresh process per message: its durable ledger (the SuperNode's state
    directory) holds every round, its optimizer and unreported events come back from the sealed node state, so
    the ε the aggregator composes is that of every step taken, and the model trains."""
    from privacy.accounting import epsilon_of_events
    from privacy.events import PrivacyEvent

    run = tmp_path / "run.toml"
    run.write_text("[data]\nplays = [\"the-tempest\", \"macbeth\", \"hamlet\"]\nvocab_size = 300\n"
                   "block_size = 16\nmax_blocks_per_client = 48\n[model]\nn_layer = 1\nn_embd = 16\n[train]\n"
                   "local_steps = 2\nbatch_size = 8\nthreads = 1\n[dp]\nenabled = true\nnoise_multiplier = 1.0\n"
                   "max_grad_norm = 1.0\nepsilon_budget = 50.0\n[federation]\nscheme = \"masking\"\n"
                   "update_clip = 1.0\n")
    agg, grid, cfg, certs = _lm_federation(tmp_path, run, "masking")
    work = agg.work
    rows = agg.run()
    assert [r.status for r in rows] == ["done", "done"] and rows[-1].loss < agg.initial_loss
    for c in range(N):  # ε composed by the aggregator = every step of both rounds (none lost with a process)
        q = min(1.0, 8 / len(work.data.clients[c]))
        want = epsilon_of_events([PrivacyEvent(1.0, q, 4)], 1e-5, relation="replace-one")
        assert rows[-1].epsilon_per_client[c] == pytest.approx(want, rel=1e-6)
        flower_client._WORK.clear()  # and the client's own ledger, in a fresh process, holds both rounds
        proc = flower_client.NodeProcess(agg.settings, Trust.from_certs(certs, N, own=c), lambda: make_workload(cfg))
        proc.restore(grid.contexts[100 + c].state, proc.trust.state_key(c), f"42|flower-run-42|{c}".encode())
        ledger = proc.sessions[c].source.trainer.ledger
        assert [r["events"][0].steps for r in ledger.releases] == [2, 2]
        assert ledger.spent() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ConfigError, match="its own run file"):
        config_of({"trainer": "local", "clients": 3, "scheme": "ckks"}, {"scheme": "ckks", "clients": 3})


def test_two_flower_runs_with_one_ledger_continue_one_budget_and_a_third_is_refused(tmp_path):
    """Each run a fresh Flower run (a new run id: nothing sealed carries over); the SuperNodes' ledger directory
    (their own node config) continues each client's budget: run 2 adds to run 1, run 3 cannot afford a round,
    so every client withdraws at check-in and the federation stops cleanly without a round. A run config that
    names another ledger path (a server resetting budgets) is ignored."""
    from flwr.supercore.task_identity import TaskIdentity

    from privacy.accounting import epsilon
    from privacy.durable import read_ledgers

    q = 8 / 48
    e2, e3 = (epsilon(1.0, q, 2 * k, 1e-5, relation="replace-one") for k in (2, 3))
    run = tmp_path / "run.toml"
    run.write_text("[data]\nplays = [\"the-tempest\", \"macbeth\", \"hamlet\"]\nvocab_size = 300\n"
                   "block_size = 16\nmax_blocks_per_client = 48\n[model]\nn_layer = 1\nn_embd = 16\n[train]\n"
                   "local_steps = 2\nbatch_size = 8\nthreads = 1\n[dp]\nenabled = true\nnoise_multiplier = 1.0\n"
                   f"max_grad_norm = 1.0\nepsilon_budget = {(e2 + e3) / 2}\n[federation]\nscheme = \"masking\"\n"
                   "update_clip = 1.0\n")
    certs, ledger = str(init_certs(tmp_path / "certs", N)), tmp_path / "node-ledgers"
    rc = {"scheme": "masking", "clients": N, "rounds": 1, "trainer": "local", "config": str(run),
          "ledger": str(tmp_path / "server-chosen")}
    pins = {"scheme": "masking", "clients": N, "config": str(run), "ledger": str(ledger)}
    outcomes = []
    for run_id in (7, 8, 9):
        grid = FreshProcessGrid(rc, certs, {100 + c: {"client-id": c} | pins for c in range(N)}, run_id)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
        cfg = config_of(rc)
        agg = FlowerAggregator(grid, settings_of(cfg) | {"run": f"flower-run-{run_id}"}, Trust.from_certs(certs, N),
                               make_workload(cfg), timeout=5)
        rows = agg.run()
        outcomes.append(([r.status for r in rows], agg.engine.stop_reason))
        if run_id < 9:
            assert {r["client"]: r["releases"] for r in read_ledgers(ledger)} == \
                {f"client-{c}": run_id - 6 for c in range(N)}
    assert outcomes[:2] == [(["done"], None)] * 2
    assert outcomes[2][0] == [] and "BudgetExceededError: spent ε=" in outcomes[2][1]
    assert not (tmp_path / "server-chosen").exists()
    final = read_ledgers(ledger)
    assert all(r["epsilon"] == pytest.approx(e2, rel=1e-6) and r["epsilon"] <= r["budget"] for r in final)


def test_distributed_placement_runs_on_flower_and_every_ledger_records_the_secure_sums_noise(tmp_path):
    """`[dp] placement = "distributed"` through the Flower app (each message a fresh client process) and the
    services' LM workload: CKKS, the gradient rule, one noisy step per round; every client's own ledger records
    (σ_eff, q, 1) per round against the server and c colluders, and the aggregator composes the same ε."""
    from privacy.accounting import epsilon_of_events
    from privacy.events import PrivacyEvent
    from privacy.placement import DistributedNoise

    run = tmp_path / "run.toml"
    run.write_text("[data]\nplays = [\"the-tempest\", \"macbeth\", \"hamlet\"]\nvocab_size = 300\n"
                   "block_size = 16\nmax_blocks_per_client = 48\n[model]\nn_layer = 1\nn_embd = 16\n[train]\n"
                   "local_steps = 1\nbatch_size = 8\nthreads = 1\noptimizer = \"sgd\"\nlr = 0.5\n[dp]\n"
                   "enabled = true\nnoise_multiplier = 1.0\nmax_grad_norm = 1.0\nplacement = \"distributed\"\n"
                   "colluders = 0\n[federation]\nscheme = \"ckks\"\naggregator = \"gradient\"\n"
                   f"min_contributors = {N}\nupdate_clip = 1.0\n")
    agg, grid, cfg, certs = _lm_federation(tmp_path, run, "ckks")
    work = agg.work
    rows = agg.run()
    assert [r.status for r in rows] == ["done", "done"]
    sigma_eff = DistributedNoise(1.0, N, 0, N).effective_multiplier
    share = DistributedNoise(1.0, N, 0, N).share_multiplier
    assert rows[-1].epsilon_relation.startswith("replace-one record of the clients' union, against server + 0")
    for c in range(N):
        q = min(1.0, 8 / len(work.data.clients[c]))
        want = epsilon_of_events([PrivacyEvent(sigma_eff, q, 2)], 1e-5, relation="replace-one")
        assert rows[-1].epsilon_per_client[c] == pytest.approx(want, rel=1e-6)
        exposed = epsilon_of_events([PrivacyEvent(share, q, 2)], 1e-5, relation="replace-one")  # the sum broken
        assert rows[-1].exposed_epsilon_per_client[c] == pytest.approx(exposed, rel=1e-6) and exposed > want
        flower_client._WORK.clear()
        proc = flower_client.NodeProcess(agg.settings, Trust.from_certs(certs, N, own=c), lambda: make_workload(cfg))
        proc.restore(grid.contexts[100 + c].state, proc.trust.state_key(c), f"42|flower-run-42|{c}".encode())
        ledger = proc.sessions[c].source.trainer.ledger
        assert [r["events"][0].steps for r in ledger.releases] == [1, 1]
        assert ledger.summary()["adversary"].startswith("server + 0 colluding")


def test_a_streaming_masking_client_keeps_its_update_encrypted_on_disk_not_in_the_sealed_state(tmp_path, monkeypatch):
    """Between its task and its share delivery a masking client's update waits in an :class:`UpdateFile`: the
    sealed node state stays far below the update's 8 bytes per value, and the file is gone with the round."""
    spool = _spooled(monkeypatch, tmp_path)
    agg, grid = _run(tmp_path, "masking", dim=STREAMED)
    blobs, files = [], []

    def look(ctx):
        if "secagg" in ctx.state:
            blobs.append(len(ctx.state["secagg"]["blob"]))
        files.append(sorted(p.suffix for p in spool.iterdir()))

    grid.tamper = look
    assert [r.status for r in agg.run()] == ["done", "done"]
    assert max(blobs) < STREAMED  # under 1 B/value: neither the update nor a model is sealed
    assert any(".update" in f for f in files) and not list(spool.iterdir())


def test_an_update_file_reads_back_exactly_and_refuses_a_changed_swapped_or_missing_block(tmp_path):
    import pickle

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from secagg.snapshot import SnapshotError
    from training.flower.spool import UpdateFile

    x = np.random.default_rng(0).standard_normal(1000)
    f = UpdateFile.write(tmp_path, "run-c0-r1", x, block=64)
    assert Path(f.path).stat().st_mode & 0o077 == 0 and len(pickle.dumps(f)) < 400  # the key and path only

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 1000), st.integers(0, 1000))
    def slices(a, b):
        assert np.array_equal(f[a:b], x[a:b])

    slices()
    assert Path(f.path).read_bytes().count(x[:64].tobytes()) == 0  # nothing in the clear
    data = bytearray(Path(f.path).read_bytes())
    width = 8 * 64 + 16
    swapped = data[width:2 * width] + data[:width] + data[2 * width:]
    for bad, where in [(data[:100] + bytes([data[100] ^ 1]) + data[101:], slice(0, 10)),
                       (swapped, slice(0, 10)), (data[:-1], slice(990, 1000))]:
        Path(f.path).write_bytes(bytes(bad))
        with pytest.raises(SnapshotError, match="not what this client wrote"):
            f[where]
    other = UpdateFile.write(tmp_path, "run-c1-r1", x, block=64)  # same values, another key: not interchangeable
    Path(f.path).write_bytes(Path(other.path).read_bytes())
    with pytest.raises(SnapshotError):
        f[0:1]
    f.remove()
    with pytest.raises(SnapshotError, match="gone"):
        f[0:1]
    with pytest.raises(TypeError):
        other[::2]
