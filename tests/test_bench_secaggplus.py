"""benchmarks._flower_direct (Flower's SecAgg+ with no runtime in between) and secaggplus_whole's comparison."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from benchmarks._flower_direct import flower_secaggplus_round  # noqa: E402
from benchmarks.secaggplus_whole import KEYS, run, verdicts  # noqa: E402


def test_flower_direct_round_returns_flowers_weighted_mean_and_times_every_client():
    n, dim = 5, 300
    ups = {i: np.random.default_rng(i).uniform(-1, 1, dim).astype(np.float32) for i in range(n)}
    ws = {i: 1 + i for i in range(n)}
    res = flower_secaggplus_round(ups, ws, k=4, t=3)
    exact = sum(ws[i] * ups[i].astype(np.float64) for i in range(n)) / sum(ws.values())
    err = np.max(np.abs(res["mean"].astype(np.float64) - exact))
    assert err < 5e-3  # Flower's quantization (clip 8, 2^22 levels) and nothing else
    assert sorted(res["client_cpu_s"]) == list(range(n)) and all(v > 0 for v in res["client_cpu_s"].values())
    assert res["server_cpu_s"] > 0 and res["round_cpu_s"] >= res["server_cpu_s"]
    assert all(res["bytes_up"][i] > 4 * dim for i in range(n))  # each client uploaded at least its masked vector


def test_comparison_runs_both_sides_on_the_same_graph_and_reports_ratios():
    rows = run([4], dim=200, repeats=1)
    (row,) = rows
    assert (row["k"], row["flower_num_shares"]) == (3, 4)
    assert row["ours"]["max_abs_error"] < 1e-6 and row["flower"]["max_abs_error"] < 5e-3
    for key in KEYS:
        assert row["flower_over_ours"][key] == pytest.approx(row["flower"][key] / row["ours"][key])
    assert verdicts(rows) == []  # verdicts are stated only for n = 100
