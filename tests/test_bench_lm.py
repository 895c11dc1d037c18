"""Helpers of the language-model benchmarks (benchmarks/_lm.py) and privacy_utility's lr selection."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import privacy_utility as PU
from benchmarks._lm import PlainScheme, clipped_signal, documents
from training.config import RunConfig


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 5), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_plain_baseline_is_the_weighted_sum_of_the_survivors_through_the_engine(n, d, seed):
    from training.engine.rules import FedAvg
    from training.inprocess.federation import Federation
    from training.inprocess.secure_sum import SecureSum
    from training.workload.client_update import ClientUpdate

    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, d))
    weights = rng.integers(1, 6, size=n)
    drop = tuple(i for i in range(n) if i and rng.random() < 0.3)
    secure = SecureSum("masking", clip=1.0)
    fed = Federation(np.zeros(d), FedAvg(), secure, list(range(n)), update_clip=1e9)
    secure.roles = fed.engine.scheme = PlainScheme()
    rep = fed.aggregate({i: ClientUpdate(i, vecs[i], int(weights[i]), 1.0) for i in range(n)}, drop=drop)
    keep = [i for i in range(n) if i not in drop]
    res = rep.record.result
    np.testing.assert_allclose(res.weighted_sum, (weights[keep, None] * vecs[keep]).sum(0), rtol=1e-6, atol=1e-5)
    assert res.total_weight == pytest.approx(weights[keep].sum())
    assert res.contributors == tuple(keep) and res.dropped == drop
    assert {i: rep.bytes_up[i] for i in keep} == {i: 4 + 4 * (d + 1) for i in keep}


def _small_config() -> RunConfig:
    cfg = RunConfig()
    cfg.data.plays = ["the-tempest", "macbeth"]
    cfg.data.vocab_size, cfg.data.block_size, cfg.data.max_blocks_per_client = 300, 16, 64
    cfg.model.n_layer, cfg.model.n_embd = 1, 16
    cfg.federation.clients = 2
    return cfg


def test_public_documents_are_disjoint_from_the_private_ones():
    private, public = documents(_small_config().data, 3)
    assert set(private) == {"the-tempest", "macbeth"} and len(public) == 3 and not set(public) & set(private)


@pytest.mark.parametrize("clip", [1e-3, 100.0])
def test_clipped_signal_is_at_most_the_clip_norm_and_counts_clipping(clip):
    cfg = _small_config()
    cfg.dp.max_grad_norm = clip
    s = clipped_signal(cfg, None, batch_size=8, repeats=2)
    assert 0 < s["clipped_mean_grad_norm"] <= clip * (1 + 1e-6)  # a mean of vectors of norm <= C
    assert s["fraction_clipped"] == (1.0 if clip < 1e-2 else 0.0) and s["median_grad_norm"] > 0
    assert s["params"] > 0 and s["batch_size"] == 8


def test_lr_selection_gives_each_side_its_best_grid_value(monkeypatch):
    # validation loss as a function of (lr, private): the best lr differs between the two sides
    loss = {(1e-3, True): 4.0, (3e-3, True): 3.9, (1e-2, True): 3.95,
            (1e-3, False): 3.7, (3e-3, False): 3.8, (1e-2, False): 3.75}
    seen = []

    def fake_run(args, scheme, agg, eps, init, sigmas, path):
        private = not math.isinf(eps)
        lr = args.dp_lr if private else args.lr
        seen.append((scheme, agg, eps, lr))
        return {"scheme": scheme, "aggregator": agg, "init": init, "status": "ok", "lr": lr,
                "epsilon_target": eps if private else None, "val_loss": loss[(lr, private)],
                "val_perplexity": math.exp(loss[(lr, private)]), "initial_loss": 4.1, "wall_seconds": 0.0,
                "epsilon_spent": eps if private else None, "val_next_token_accuracy": 0.1}

    monkeypatch.setattr(PU, "run_one", fake_run)
    args = argparse.Namespace(lr_grid=[1e-3, 3e-3, 1e-2], lr=None, dp_lr=None)
    rows, chosen = PU.tune_lr(args, [("plaintext", "fedavg", 8.0, "pretrained")], {}, None, 0.0)
    assert len(rows) == 6 and {(s, a) for s, a, _, _ in seen} == {("plaintext", "fedavg")}
    assert (args.dp_lr, args.lr) == (3e-3, 1e-3)
    assert [(r["epsilon_target"], r["lr"]) for r in chosen] == [(8.0, 3e-3), (None, 1e-3)]


def test_full_model_benchmark_streams_every_scheme_and_resumes(tmp_path, monkeypatch):
    import json

    from benchmarks import full_model

    full_model.main(["--dim", "150000", "--clients", "3", "--out", str(tmp_path), "--part-chunks", "2"])
    out = json.loads((tmp_path / "full_model.json").read_text())
    rows = {r["scheme"]: r for r in out["rows"]}
    assert set(rows) == {"masking32", "packed", "ckks-default"} and out["dim"] == 150000
    for s, r in rows.items():
        assert r["max_abs_error"] < 1e-4 and r["n"] == 3 and r["part_chunks"] == 2
        assert r["peak_rss_bytes"] >= r["baseline_rss_bytes"] > 0 and r["goal_met"]
        assert r["up_bytes_per_value"] >= 4  # at least the fp32 it hides
    assert out["goal_met"]
    ran = []
    monkeypatch.setattr(full_model, "_child", lambda *a: ran.append(a) or {})
    full_model.main(["--dim", "150000", "--clients", "3", "--out", str(tmp_path)])
    assert ran == []  # every row was already there: nothing runs again
    assert (tmp_path / "full_model.png").read_bytes()[:4] == b"\x89PNG"


def test_smollm2_privacy_summary_checks_the_goal_against_the_non_private_run():
    from benchmarks.smollm2_privacy import summarise

    def run(eps, ppl, seed=0):
        return {"scheme": "ckks", "seed": seed, "epsilon_target": eps, "final_perplexity": ppl,
                "initial_perplexity": 160.0}

    runs = [run(None, 70.0), run(None, 72.0, 1), run(8.0, 73.0), run(8.0, 75.0, 1), run(2.0, 100.0)]
    s = summarise(runs)
    assert s["by_point"]["ckks eps=8"] == {"mean": 74.0, "min": 73.0, "max": 75.0, "seeds": 2}
    g = s["goal"]["ckks"]
    assert g["ppl_ratio"] == pytest.approx(74.0 / 71.0) and g["gain_kept"] == pytest.approx(86.0 / 89.0)
    assert g["pass"]
    assert not summarise([run(None, 70.0), run(8.0, 90.0)])["goal"]["ckks"]["pass"]  # 1.29x: a miss


def _fake_federation(optimum: dict, calls: list):
    """A stand-in for one SmolLM2 federation: perplexity is a bowl in log10(lr) around ``optimum[ε]``."""
    def run_one(scheme, eps, seed, threads, lr=0.03, tuning=False):
        calls.append((eps, lr, tuning))
        ppl = 50.0 + 10 * (math.log10(lr) - math.log10(optimum[eps])) ** 2 + (0 if tuning else 1)
        return {"scheme": scheme, "seed": seed, "epsilon_target": None if math.isinf(eps) else eps, "lr": lr,
                "split": "tuning" if tuning else "reported", "initial_perplexity": 160.0,
                "final_perplexity": ppl, "wall_s": 1.0}
    return run_one


def test_smollm2_lr_selection_extends_past_an_edge_and_stops(monkeypatch):
    from benchmarks import smollm2_privacy as SP

    calls: list = []
    monkeypatch.setattr(SP, "run_one", _fake_federation({8.0: 0.3, math.inf: 0.01, 1.0: 100.0}, calls))
    monkeypatch.setattr(SP, "tuning_plays", lambda: ["p7", "p8"])
    sel = SP.select_lr([8.0, math.inf, 1.0], [1e-2, 3e-2, 1e-1], "masking", 0, 1, jobs=1)
    assert sel["chosen"]["8"] == pytest.approx(0.3)             # one step past the upper edge, then interior
    assert sel["chosen"]["inf"] == pytest.approx(0.01)          # the lower edge tried once more, still best
    assert sel["chosen"]["1"] == pytest.approx(0.9)             # capped at MAX_EXTENSIONS steps
    assert all(tuning for _, _, tuning in calls)                # selection never runs on the reported split
    assert sorted(lr for e, lr, _ in calls if e == 1.0) == pytest.approx([0.01, 0.03, 0.1, 0.3, 0.9])
    assert len(calls) == 3 * 3 + 2 + 1 + 2
    again: list = []
    monkeypatch.setattr(SP, "run_one", _fake_federation({8.0: 0.3, math.inf: 0.01, 1.0: 100.0}, again))
    assert SP.select_lr([8.0, math.inf, 1.0], [1e-2, 3e-2, 1e-1], "masking", 0, 1, 1, sel["runs"])["chosen"] \
        == sel["chosen"] and again == []                        # an earlier selection's runs are reused


def test_smollm2_privacy_reports_each_eps_at_its_selected_lr_and_keeps_matching_runs(monkeypatch, tmp_path):
    import json

    from benchmarks import smollm2_privacy as SP

    calls: list = []
    monkeypatch.setattr(SP, "run_one", _fake_federation({8.0: 0.03, math.inf: 0.1}, calls))
    monkeypatch.setattr(SP, "tuning_plays", lambda: ["p7", "p8"])
    out = tmp_path / "sp.json"
    old = _fake_federation({8.0: 0.03, math.inf: 0.1}, [])
    kept, stale = old("ckks", 8.0, 0, 1, 0.03), old("ckks", math.inf, 0, 1, 0.03)
    for r in (kept, stale):  # rows written before lr selection carry no lr: they ran at the demo's
        del r["lr"], r["split"]
    out.write_text(json.dumps({"runs": [kept, stale]}))
    rep = SP.main(["--eps", "8", "inf", "--seeds", "0", "--schemes", "ckks", "--out", str(out), "--extend"])
    assert rep["lr_per_epsilon"] == {"8": pytest.approx(0.03), "inf": pytest.approx(0.1)}
    reported = [(e, lr) for e, lr, tuning in calls if not tuning]
    assert reported == [(math.inf, pytest.approx(0.1))]         # ε = 8 at 3e-2 kept; ε = ∞ rerun at its lr
    assert sorted((r["epsilon_target"] or math.inf, r["lr"]) for r in rep["runs"]) == \
        [(8.0, 0.03), (math.inf, pytest.approx(0.1))]
    assert json.loads(out.read_text())["lr_selection"]["chosen"] == rep["lr_per_epsilon"]
    assert (tmp_path / "sp.png").read_bytes()[:4] == b"\x89PNG"
    for bad in (["--lr-grid", "0"], ["--lr-grid", "nan"], ["--lr-grid", "0.1", "0.1"], ["--jobs", "0"]):
        with pytest.raises(SystemExit):
            SP.main([*bad, "--out", str(out)])


def test_privacy_utility_hands_the_smollm2_grid_to_smollm2_privacy(monkeypatch):
    from benchmarks import smollm2_privacy

    seen = []
    monkeypatch.setattr(smollm2_privacy, "main", lambda argv: seen.append(argv) or {})
    PU.main(["--model", "smollm2-135m"])
    assert seen[-1] == ["--eps", "1.0", "2.0", "4.0", "8.0", "inf", "--seeds", "0", "1", "2",
                        "--schemes", "ckks", "masking"]  # issue 12's grid; never the tiny model's results file
    PU.main(["--model", "smollm2-135m", "--eps", "8", "--seeds", "3", "--schemes", "plaintext", "masking"])
    assert seen[-1] == ["--eps", "8.0", "--seeds", "3", "--schemes", "masking"]


def test_scaling_full_model_runs_the_full_model_benchmark(monkeypatch, tmp_path):
    import sys

    from benchmarks import full_model, scaling

    seen = []
    monkeypatch.setattr(full_model, "main", lambda argv: seen.append(argv))
    monkeypatch.setattr(sys, "argv", ["scaling", "--full-model", "--quick", "--out", str(tmp_path)])
    scaling.main()
    assert seen == [["--quick", "--out", str(tmp_path)]]
