"""Where the privacy gap of the SmolLM2 job comes from: clipping, noise, or the learning rate (issue 27.2).

    python -m benchmarks.smollm2_gap [--seeds 0 1 2] [--jobs 2] [--lr 0.1] [--sigma 0.3726]

The ``secagg demo`` federation (:func:`benchmarks.smollm2_privacy.run_one`'s configuration: SmolLM2-135M, LoRA
rank 1 on q/v, 3 clouds, 3 rounds x 3 local steps, CKKS) in five variants that differ only in what DP-SGD does to
each step, all with the same trainable set, steps, Poisson batches of expected size 16 and local lr:

* ``non-private``: plain minibatches, no clipping, no noise;
* ``clip only``: per-example clipping at C = 0.3, noise multiplier 1e-9 (the accountant refuses 0; the noise is
  below float32 resolution);
* ``noise only``: the ε = 8 run's noise std σ·C added, with C = 10^4 so that nothing is clipped (per-example
  gradient norms here are about 0.3);
* ``clip + noise``: the ε = 8 run itself (σ = ``--sigma``, C = 0.3);
* ``non-private, its own lr``: the non-private run at the lr picked for it on the tuning split (0.03).

The gap at ε = 8 against the best non-private run (its own lr) then splits into what clipping costs at the lr DP
uses (clip only − non-private at its own lr) and what the noise adds on top (clip + noise − clip only);
``non-private`` at the DP lr shows whether that lr alone would do (it need not: unclipped steps at a high lr can
diverge), ``noise only`` what the noise costs without clipping. ``noise only`` and ``clip only`` are diagnostics,
not privacy points: their ε is not a guarantee. ``--resummarise`` recomputes the summary of ``--out``. Default lr and σ: the ε = 8 point
of ``smollm2_privacy.json``. Writes ``benchmarks/results/smollm2_gap.json`` and ``.png``; every run is one fresh
process, ``--jobs`` at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.smollm2_privacy import DEMO_LR, _config

RESULTS = Path(__file__).resolve().parent / "results"
CLIP = 0.3
VARIANTS = ("non-private", "clip only", "noise only", "clip + noise", "non-private, its own lr")


def run_variant(variant: str, seed: int, lr: float, sigma: float, threads: int = 1) -> dict:
    """One federation of ``variant`` (see the module) at ``lr``; validation perplexity after every round."""
    from training.inprocess.simulation import Runner

    cfg = _config("ckks", seed, threads, DEMO_LR if variant.endswith("its own lr") else lr, tuning=False)
    cfg.dp.enabled = not variant.startswith("non-private")
    cfg.dp.max_grad_norm = 1e4 if variant == "noise only" else CLIP
    cfg.dp.noise_multiplier = {"clip only": 1e-9, "noise only": sigma * CLIP / 1e4}.get(variant, sigma)
    t = time.perf_counter()
    runner = Runner(cfg)
    rows = runner.run()
    row = {"variant": variant, "seed": seed, "lr": cfg.train.lr, "max_grad_norm": cfg.dp.max_grad_norm,
           "noise_multiplier": cfg.dp.noise_multiplier if cfg.dp.enabled else None,
           "noise_std": cfg.dp.noise_multiplier * cfg.dp.max_grad_norm if cfg.dp.enabled else 0.0,
           "initial_perplexity": math.exp(runner.initial_loss), "final_perplexity": rows[-1].perplexity,
           "perplexity_per_round": [r.perplexity for r in rows], "wall_s": time.perf_counter() - t}
    print(f"  {variant:24} seed {seed} lr {row['lr']:.3g}: ppl {row['initial_perplexity']:.1f} -> "
          f"{row['final_perplexity']:.1f}  {row['wall_s']:.0f} s", flush=True)
    return row


def summarise(runs: list[dict]) -> dict:
    """Mean and range per variant, and the gap at ε = 8 split into clipping and noise (differences of means)."""
    by = {v: [r["final_perplexity"] for r in runs if r["variant"] == v] for v in VARIANTS}
    point = {v: {"mean": float(np.mean(p)), "min": min(p), "max": max(p), "seeds": len(p)} for v, p in by.items() if p}
    m = {v: p["mean"] for v, p in point.items()}
    parts = {}
    if len(m) == len(VARIANTS):
        best = m["non-private, its own lr"]
        parts = {"gap_eps8_vs_own_lr_nonprivate": m["clip + noise"] - best,
                 "clipping_at_dp_lr": m["clip only"] - best,
                 "noise_after_clipping": m["clip + noise"] - m["clip only"],
                 "nonprivate_at_dp_lr": m["non-private"] - best,
                 "noise_without_clipping": m["noise only"] - best}
    return {"by_variant": point, "parts": parts}


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in VARIANTS if v in summary["by_variant"]]
    pts = [summary["by_variant"][v] for v in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(names)), [p["mean"] for p in pts], color=["C2", "C0", "C1", "C3", "C2"][:len(names)],
           yerr=[[p["mean"] - p["min"] for p in pts], [p["max"] - p["mean"] for p in pts]], capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=12, fontsize=8)
    ax.set_ylabel("validation perplexity after 3 rounds (mean, min-max)")
    ax.set_title("SmolLM2-135M DP LoRA: what clipping and noise each cost (ε = 8 setting)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=None, help="local lr of the DP variants (default: ε = 8's)")
    ap.add_argument("--sigma", type=float, default=None, help="noise multiplier of ε = 8 (default: its calibration)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    ap.add_argument("--out", type=Path, default=RESULTS / "smollm2_gap.json")
    ap.add_argument("--resummarise", action="store_true", help="recompute the summary and PNG of --out's runs")
    args = ap.parse_args(argv)
    if args.resummarise:
        record = json.loads(args.out.read_text())
        record.update(summarise(record["runs"]))
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        _plot(record, args.out.with_suffix(".png"))
        return record
    ref = json.loads((RESULTS / "smollm2_privacy.json").read_text())
    eps8 = next(r for r in ref["runs"] if r["epsilon_target"] == 8.0 and r["split"] == "reported")
    lr = args.lr or ref["lr_per_epsilon"]["8"]
    sigma = args.sigma or eps8["calibration"]["sigma"]
    calls = [(v, s, lr, sigma) for s in args.seeds for v in VARIANTS]
    t = time.perf_counter()
    if args.jobs <= 1:
        runs = [run_variant(*c) for c in calls]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_variant, *zip(*calls)))
    summary = summarise(runs)
    record = {"command": "python -m benchmarks.smollm2_gap", "machine": {"platform": platform.platform()},
              "lr": lr, "sigma_eps8": sigma, "clip": CLIP, "seeds": args.seeds, "jobs": args.jobs,
              "wall_s": time.perf_counter() - t, "runs": runs, **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    _plot(summary, args.out.with_suffix(".png"))
    for v, p in summary["by_variant"].items():
        print(f"{v:26} {p['mean']:7.1f} [{p['min']:.1f}, {p['max']:.1f}]")
    for k, v in summary["parts"].items():
        print(f"{k:32} {v:+7.1f} perplexity")
    print(f"wrote {args.out} and .png ({record['wall_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()
