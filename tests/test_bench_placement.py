"""benchmarks.smollm2_placement: the distributed run it measures, and its goal arithmetic."""

from __future__ import annotations

import math

import pytest

import benchmarks.smollm2_placement as bench


def test_the_measured_run_is_one_noisy_step_a_round_calibrated_on_sigma_eff(monkeypatch):
    """9 rounds of one SGD step, the gradient rule with the server's Adam, all 3 sums required; σ is σ_eff
    (what the 9 ledger events need) over √((m_min − c)/(n − c))."""
    monkeypatch.setattr(bench, "calibrate", lambda cfg, eps: {"sigma": 0.5, "sample_rate": 0.01, "steps": 9})
    cfg, cal = bench.placement_config(8.0, 0, 0.03, colluders=1, tuning=False)
    assert (cfg.train.rounds, cfg.train.local_steps, cfg.train.optimizer) == (9, 1, "sgd")
    assert cfg.federation.aggregator == "gradient" and cfg.aggregator_options["optimizer"] == "adam"
    noise = cfg.placement_noise()
    assert (noise.clients, noise.colluders, noise.min_survivors) == (3, 1, 3)
    assert noise.effective_multiplier == pytest.approx(0.5) and cal["sigma_eff"] == 0.5
    assert cal["sigma"] == pytest.approx(0.5 / math.sqrt(2 / 2))


@pytest.mark.parametrize("variant", ["clip only", "non-private"])
def test_the_diagnostic_variants_keep_the_shape_and_change_only_the_dp(monkeypatch, variant):
    """Issue 27.2 in the distributed shape: the same 9 one-step rounds, batch and server Adam; clipping with
    negligible noise, or no DP at all; no calibration (neither is a privacy point)."""
    monkeypatch.setattr(bench, "calibrate", lambda cfg, eps: pytest.fail("a diagnostic is not calibrated"))
    cfg, cal = bench.placement_config(None, 0, 0.03, colluders=0, tuning=True, batch=64, variant=variant)
    assert (cfg.train.rounds, cfg.train.local_steps, cfg.train.batch_size) == (9, 1, 64)
    assert cfg.federation.aggregator == "gradient" and cfg.aggregator_options["lr"] == 0.03
    assert cfg.dp.enabled == (variant == "clip only")
    if variant == "clip only":
        assert cfg.placement_noise().noise_multiplier == cal["sigma"] == 1e-9
    else:
        assert cfg.placement_noise() is None and cal["sigma"] is None


def test_the_goal_compares_each_placement_with_the_non_private_run():
    local = {"by_point": {"ckks eps=inf": {"mean": 75.0}, "ckks eps=8": {"mean": 98.0, "min": 95.0, "max": 101.0,
                                                                          "seeds": 3}},
             "runs": [{"split": "reported", "scheme": "ckks", "epsilon_target": None, "initial_perplexity": p}
                      for p in (160.0, 170.0)]}
    runs = [{"split": "reported", "epsilon_target": 8.0, "final_perplexity": p} for p in (77.0, 79.0)] + \
        [{"split": "tuning", "epsilon_target": 8.0, "final_perplexity": 10.0}]  # tuning runs are not reported
    out = bench.summarise(runs, local)
    assert out["distributed"]["8"] == {"mean": 78.0, "min": 77.0, "max": 79.0, "seeds": 2}
    g = out["goal"]["8"]
    assert g["ppl_ratio"] == pytest.approx(78.0 / 75.0) and g["gain_kept"] == pytest.approx((165 - 78) / (165 - 75))
    assert g["pass"]  # 1.04 <= 1.05 and 0.97 >= 0.80
    assert out["local"]["8"]["mean"] == 98.0


def test_a_rerun_resumes_from_the_runs_already_saved(tmp_path, monkeypatch):
    calls = []

    def fake(eps, seed, lr, colluders, tuning, more_data=False, clients=3, batch=16, variant="dp"):
        calls.append((eps, seed, lr, tuning))
        return {"epsilon_target": eps, "seed": seed, "lr": lr, "colluders": colluders, "more_data": more_data,
                "clients": clients, "batch": batch, "variant": variant, "wall_s": 1.0,
                "split": "tuning" if tuning else "reported",
                "final_perplexity": 90.0 + lr, "initial_perplexity": 160.0}

    monkeypatch.setattr(bench, "run_point", fake)
    argv = ["--eps", "8", "--seeds", "0", "1", "--lr-grid", "0.01", "0.03", "--out", str(tmp_path / "p.json")]
    first = bench.main(argv)
    assert len(calls) == 4 and first["lr_per_epsilon"] == {"8": 0.01}
    assert first["distributed"]["8"]["seeds"] == 2
    second = bench.main(argv)
    assert len(calls) == 4  # nothing run again
    assert second["wall_s"] >= first["wall_s"]  # a resumed grid keeps the wall time already spent
    with pytest.raises(SystemExit, match="choose another --out"):
        bench.main(argv + ["--colluders", "1"])
    diag = bench.main(["--variant", "clip only", "--seeds", "0", "--lr", "0.03", "--out", str(tmp_path / "c.json")])
    assert calls[4:] == [(None, 0, 0.03, False)]  # --lr: no tuning run
    assert diag["distributed"] == {"none": {"mean": 90.03, "min": 90.03, "max": 90.03, "seeds": 1}}
    assert diag["goal"] == {} and diag["variant"] == "clip only" and (tmp_path / "c.png").stat().st_size > 0
