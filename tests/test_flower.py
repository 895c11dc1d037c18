"""The Flower driver on Flower's simulation runtime: the same engine, the same model as in-process.

Each simulation starts Ray (~15 s here), so the cases are few and cover: all three schemes, all four rules, the
parity with the in-process driver (masking bit for bit, CKKS within its error), and ``secagg flower sim`` writing
the outputs of ``secagg run`` for a real (tiny) language model with DP.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from tests.test_engine_parity import DIM, N, _in_process  # noqa: E402
from training.engine.rules import BufferedAsync, FedAvg  # noqa: E402
from training.flower.sim import simulate  # noqa: E402
from training.deployment import TransportConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]  # one Ray at a time on the machine


def _cfg(scheme: str, aggregator: str = "fedavg", rounds: int = 2, **kw) -> TransportConfig:
    return TransportConfig(scheme=scheme, trainer="synthetic", clients=N, rounds=rounds, dim=DIM, seed=7, clip=1.0,
                           aggregator=aggregator, rounding="deterministic", **kw).validate()


@pytest.mark.parametrize("scheme", ["masking", "ckks"])
def test_flower_sim_gives_the_in_process_model(scheme, tmp_path):
    from training.flower.meter import MessageMeter, per_round

    res = simulate(_cfg(scheme), timeout=60, mods=(MessageMeter(tmp_path / "meter.jsonl"),))
    rows = res["rows"]
    assert [r.status for r in rows] == ["done", "done"] and all(r.contributors == [0, 1, 2] for r in rows)
    metered = per_round(tmp_path / "meter.jsonl")  # every message metered, grouped by round
    assert set(metered) == {"setup", "1", "2"} and len(res["server_cpu_seconds"]) == 2
    clients = set(range(N)) | ({N} if scheme == "ckks" else set())  # the key holder is the last partition
    assert set(metered["1"]["by_partition"]) == clients
    assert all(metered[g]["up"] > 0 and metered[g]["seconds"] > 0 for g in ("1", "2"))
    assert rows[1].loss < rows[0].loss < res["initial_loss"]
    local = _in_process(scheme, FedAvg(), [{c: r for c in range(N)} for r in range(2)])
    if scheme == "masking":
        assert np.array_equal(res["model"], local)  # bit for bit: one engine, two drivers
    else:
        np.testing.assert_allclose(res["model"], local, atol=1e-5, rtol=0)
        assert all(r.keyholder_bytes > 0 for r in rows)


def test_flower_sim_buffered_async_replays_in_process():
    res = simulate(_cfg("masking", "async", rounds=3, aggregator_options={"buffer_size": 2, "alpha": 0.8}),
                   timeout=60)
    rows = res["rows"]
    assert [r.status for r in rows] == ["done"] * 3
    schedule = []
    for r in rows:  # which version each member trained from (staleness = round - base)
        schedule.append({int(c): (r.round - 1) - int(s) for c, s in r.staleness.items()})
    assert all(len(s) == 2 for s in schedule)
    local = _in_process("masking", BufferedAsync(buffer_size=2, alpha=0.8), schedule)
    assert np.array_equal(res["model"], local)


@pytest.mark.parametrize("scheme,aggregator", [("packed", "loss-weighted"), ("masking", "gradient")])
def test_flower_sim_runs_the_other_schemes_and_rules(scheme, aggregator):
    opts = {"lr": 0.5} if aggregator == "gradient" else {}
    res = simulate(_cfg(scheme, aggregator, aggregator_options=opts), timeout=60)
    rows = res["rows"]
    assert [r.status for r in rows] == ["done", "done"], [r.reason for r in rows]
    assert rows[-1].loss < res["initial_loss"] and np.all(np.isfinite(res["model"]))


def test_secagg_flower_sim_writes_the_outputs_of_secagg_run(tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    run = tmp_path / "run.toml"
    run.write_text("[data]\nplays = [\"the-tempest\", \"macbeth\", \"hamlet\"]\nvocab_size = 300\nblock_size = 16\n"
                   "max_blocks_per_client = 48\n[model]\nn_layer = 1\nn_embd = 16\n[train]\nlocal_steps = 2\n"
                   "batch_size = 8\nthreads = 1\n[dp]\nenabled = true\nnoise_multiplier = 1.0\nmax_grad_norm = 1.0\n"
                   "[federation]\nscheme = \"ckks\"\nupdate_clip = 1.0\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["flower", "sim", "--config", str(run), "--clients", "3", "--rounds", "2",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and "initial_loss" in rows[0]
    assert all(r["status"] == "done" and r["contributors"] == [0, 1, 2] for r in rows)
    eps = [r["epsilon"] for r in rows]
    assert eps[0] is not None and 0 < eps[0] < eps[1]  # every round's DP-SGD steps are accounted in its row
    assert (out / "loss.png").stat().st_size > 1000 and (out / "epsilon.png").exists()
    assert "validation perplexity" in res.output and "privacy spent" in res.output


def test_flower_sim_ends_with_the_model_of_secagg_run_with_dp_off(tmp_path):
    """The issue's parity: one seed, DP off, a real (tiny) language model: `secagg run`'s in-process Runner and
    `secagg flower sim` (clients train in a Ray actor from float32 models) end within CKKS's error."""
    from training.config import load_config
    from training.workload.trainer import build_model, get_flat
    from training.inprocess.simulation import Runner
    from training.deployment import load_transport_config

    run = tmp_path / "run.toml"
    run.write_text("[data]\nplays = [\"the-tempest\", \"macbeth\", \"hamlet\"]\nvocab_size = 300\nblock_size = 16\n"
                   "max_blocks_per_client = 48\n[model]\nn_layer = 1\nn_embd = 16\n[train]\nlocal_steps = 2\n"
                   "rounds = 2\nbatch_size = 8\nthreads = 1\n[dp]\nenabled = false\n"
                   "[federation]\nclients = 3\nscheme = \"ckks\"\nupdate_clip = 1.0\n")
    runner = Runner(load_config(run))
    start = get_flat(build_model(runner.spec)).astype(np.float64)
    runner.run()
    flower = simulate(load_transport_config(run), timeout=120)["model"]
    moved = float(np.max(np.abs(runner.fed.global_vec - start)))
    diff = float(np.max(np.abs(runner.fed.global_vec - flower)))
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)


@pytest.mark.parametrize("scheme", ["masking", "ckks"])
def test_flower_streams_a_contribution_part_by_part_and_gives_the_in_process_model(scheme, tmp_path):
    """Parts of one chunk (masking: 64 Ki values; CKKS: one ciphertext) and, for CKKS, a window of one chunk:
    every contribution spans several Flower messages (the first part in the reply that made it, the rest spooled
    on the client's disk and asked for with ``part``, in lockstep, so even a one-chunk window refuses none); the
    model is the in-process driver's, and no spool file outlives the run."""
    spool, dim = tmp_path / "spool", 2 * 65536 + 10
    cfg = TransportConfig(scheme=scheme, trainer="synthetic", clients=N, rounds=2, dim=dim, seed=7, clip=1.0,
                          rounding="deterministic", part_chunks=1, window_bytes=1).validate()
    res = simulate(cfg, timeout=60, settings={"spool": str(spool)})
    assert [r.status for r in res["rows"]] == ["done", "done"], [r.reason for r in res["rows"]]
    local = _in_process(scheme, FedAvg(), [{c: r for c in range(N)} for r in range(2)], dim=dim)
    if scheme == "masking":
        assert np.array_equal(res["model"], local)
        assert res["parts"] == 2 * N * 2  # 3 parts per contribution: 2 asked for, per client and round
    else:
        np.testing.assert_allclose(res["model"], local, atol=1e-5, rtol=0)
        assert res["parts"] > 2 * N * 20
    assert spool.is_dir() and not list(spool.iterdir())
