"""The deployed Flower apps, without processes: a grid that hands every message to the ClientApp handler with a
fresh process's memory (nothing kept but each node's ``context.state``), so every masking key, share and the
key holder's secret context must survive sealed in the node state. Same model as in-process; a tampered or
swapped node state is refused, never used."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402

from tests.test_engine_parity import DIM, N, _in_process  # noqa: E402
from training.aggregation import FedAvg  # noqa: E402
from training.errors import ConfigError  # noqa: E402
from training.flower import client as flower_client  # noqa: E402
from training.flower.deploy import client_app, config_of  # noqa: E402
from training.flower.protocol import Trust  # noqa: E402
from training.flower.server import FlowerAggregator  # noqa: E402
from training.flower.sim import settings_of  # noqa: E402
from training.pki.certs import init_certs  # noqa: E402
from training.workload import make_workload  # noqa: E402

pytestmark = pytest.mark.xdist_group("flower")


class FreshProcessGrid:
    """Node i answers through the deployed ClientApp; module memory is wiped before every message."""

    def __init__(self, run_config: dict, certs: str, nodes: dict[int, dict]) -> None:
        self.app = client_app()
        self.contexts = {nid: Context(run_id=42, node_id=nid, node_config=cfg | {"certs": certs},
                                      state=RecordDict(), run_config=run_config) for nid, cfg in nodes.items()}
        self.tamper = None

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            flower_client._WORK.clear()  # a fresh flwr-clientapp process per message
            ctx = self.contexts[msg.metadata.dst_node_id]
            if self.tamper is not None:
                self.tamper(ctx)
            replies.append(self.app(message=msg, context=ctx))
        return replies


def _run(tmp_path, scheme: str, tamper=None):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, 1, 1  # what flwr-serverapp sets
    certs = str(init_certs(tmp_path / "certs", N))
    rc = {"scheme": scheme, "clients": N, "rounds": 2, "trainer": "synthetic", "dim": DIM, "seed": 7, "clip": 1.0,
          "rounding": "deterministic", "aggregator": "fedavg"}
    nodes = {100 + c: {"client-id": c} for c in range(N)} | {200: {"role": "keyholder"}}
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
        with pytest.raises(Exception):
            agg.run()
    finally:
        flower_client.NodeProcess.restore = real
    assert refusals and set(refusals) == {"SnapshotError"}


def test_node_with_the_wrong_signing_key_is_refused(tmp_path):
    certs = init_certs(tmp_path / "certs", N)
    (certs / "client-1.sign.key").write_bytes((certs / "client-0.sign.key").read_bytes())
    with pytest.raises(Exception, match="not client-1's certified key"):
        Trust.from_certs(str(certs), N, own=1)


def test_deployment_refuses_the_stateful_lm_trainer():
    with pytest.raises(ConfigError, match="one process per message"):
        config_of({"trainer": "local", "clients": 3})
