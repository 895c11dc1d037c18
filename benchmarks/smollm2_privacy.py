"""Privacy vs utility of the main job: federated DP LoRA fine-tuning of SmolLM2-135M at several ε.

    python -m benchmarks.smollm2_privacy [--eps 2 8 inf] [--seeds 0] [--schemes ckks] [--threads 1]
    python -m benchmarks.privacy_utility --model smollm2-135m     # the same, issue 12's grid by default:
                                                                  # ε ∈ {1, 2, 4, 8, ∞} x {ckks, masking} x 3 seeds

Each point is the ``secagg demo`` run (``training.config.demo_config("smollm2-135m")``: 3 clouds with two plays
each, LoRA rank 1 on q/v, 3 rounds x 3 local steps, expected batch 16 x 32 tokens, clip 0.3, local AdamW lr 3e-2)
with σ calibrated so that every client's ε after the 9 steps is at most the target (δ = 1e-5; the smallest
client has the largest sample rate and binds); ε = ∞ is the same run without DP. DP and non-DP runs share rounds,
steps, batch and learning rate; the learning rate is the demo's, **not** re-tuned per ε (so the DP side is not
favoured by selection on the validation set). Validation perplexity is on the held-out tail of every play, before
training and after every round. Writes ``benchmarks/results/smollm2_privacy.json`` and ``.png``.

Goal recorded (issue 12): at ε = 8, perplexity within 5% of non-private and at least 80% of the non-private
perplexity gain over the pretrained start kept. Timings: a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from training.config import RunConfig, demo_config

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_EPS, GOAL_PPL_RATIO, GOAL_GAIN_KEPT = 8.0, 1.05, 0.80


def _config(scheme: str, seed: int, threads: int) -> RunConfig:
    cfg = demo_config("smollm2-135m")
    cfg.federation.scheme, cfg.train.seed, cfg.train.threads = scheme, seed, threads
    return cfg


def calibrate(cfg: RunConfig, eps: float) -> dict:
    """σ for which every client's ε after rounds x local_steps DP-SGD steps is <= ``eps``."""
    from privacy.accounting import noise_multiplier_for_epsilon
    from training.corpus import prepare
    from training.pretrained import tokenizer_dir

    data = prepare(cfg.data, cfg.federation.clients, np.random.default_rng(cfg.train.seed),
                   tokenizer_dir=tokenizer_dir(cfg.model.name, cfg.model.path, cfg.data.cache_dir))
    q = min(1.0, cfg.train.batch_size / min(len(c) for c in data.clients))
    steps = cfg.train.rounds * cfg.train.local_steps
    sigma = noise_multiplier_for_epsilon(eps, q, steps, cfg.dp.delta, accountant="prv")
    return {"sigma": sigma, "sample_rate": q, "steps": steps, "client_blocks": [len(c) for c in data.clients]}


def run_one(scheme: str, eps: float, seed: int, threads: int) -> dict:
    from training.runner import Runner

    cfg = _config(scheme, seed, threads)
    row: dict = {"scheme": scheme, "seed": seed, "epsilon_target": None if math.isinf(eps) else eps}
    if math.isinf(eps):
        cfg.dp.enabled = False
    else:
        row["calibration"] = calibrate(cfg, eps)
        cfg.dp.noise_multiplier = row["calibration"]["sigma"]
    t = time.perf_counter()
    runner = Runner(cfg)
    rows = runner.run()
    eps_spent = [e for e in rows[-1].epsilon_per_client.values() if e is not None]
    row.update(initial_perplexity=math.exp(runner.initial_loss),
               perplexity_per_round=[r.perplexity for r in rows], final_perplexity=rows[-1].perplexity,
               epsilon_spent_max=max(eps_spent) if eps_spent else None, wall_s=time.perf_counter() - t,
               bytes_up=sum(r.bytes_up for r in rows))
    print(f"  {scheme:8} seed {seed} eps={'inf' if math.isinf(eps) else f'{eps:g}':>4}: ppl "
          f"{row['initial_perplexity']:.1f} -> {row['final_perplexity']:.1f}  eps spent "
          f"{row['epsilon_spent_max'] if row['epsilon_spent_max'] is not None else '-'}  {row['wall_s']:.0f} s",
          flush=True)
    return row


def summarise(runs: list[dict]) -> dict:
    """Mean and range over seeds per (scheme, ε), and the goal check at ε = 8 against ε = ∞."""
    out: dict = {}
    for key in sorted({(r["scheme"], r["epsilon_target"] or math.inf) for r in runs}):
        ppl = [r["final_perplexity"] for r in runs if (r["scheme"], r["epsilon_target"] or math.inf) == key]
        out[f"{key[0]} eps={key[1]:g}"] = {"mean": float(np.mean(ppl)), "min": min(ppl), "max": max(ppl),
                                           "seeds": len(ppl)}
    goals = {}
    for scheme in sorted({r["scheme"] for r in runs}):
        dp, ref = out.get(f"{scheme} eps={GOAL_EPS:g}"), out.get(f"{scheme} eps=inf")
        if dp and ref:
            start = float(np.mean([r["initial_perplexity"] for r in runs if r["scheme"] == scheme and
                                   r["epsilon_target"] in (GOAL_EPS, None)]))  # the compared runs' seeds
            ratio, kept = dp["mean"] / ref["mean"], (start - dp["mean"]) / (start - ref["mean"])
            goals[scheme] = {"ppl_ratio": ratio, "gain_kept": kept, "pass": ratio <= GOAL_PPL_RATIO and
                             kept >= GOAL_GAIN_KEPT}
    return {"by_point": out, "goal": goals}


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme in sorted({r["scheme"] for r in runs}):
        by_eps: dict[float, list[float]] = {}
        for r in runs:
            if r["scheme"] == scheme:
                by_eps.setdefault(r["epsilon_target"] or 64.0, []).append(r["final_perplexity"])
        xs = sorted(by_eps)
        mean = [float(np.mean(by_eps[x])) for x in xs]
        err = [[m - min(by_eps[x]) for x, m in zip(xs, mean)], [max(by_eps[x]) - m for x, m in zip(xs, mean)]]
        ax.errorbar(xs, mean, yerr=err, fmt="o-", capsize=3,
                    label=f"{scheme}: mean, min-max over seeds (ε = ∞ at 64)")
    ax.axhline(np.mean([r["initial_perplexity"] for r in runs]), color="gray", ls="--", label="pretrained start")
    ax.set(xscale="log", xlabel="ε per client (δ = 1e-5)", ylabel="validation perplexity after 3 rounds",
           title="SmolLM2-135M, federated DP LoRA (rank 1), 3 clouds")
    ax.set_xticks([1, 2, 4, 8, 16, 64], ["1", "2", "4", "8", "16", "∞"])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", nargs="+", type=float, default=[2.0, 8.0, math.inf])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--schemes", nargs="+", default=["ckks"], choices=["ckks", "masking", "packed"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=RESULTS / "smollm2_privacy.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG of --out from its JSON")
    ap.add_argument("--extend", action="store_true",
                    help="keep the runs already in --out and add only the missing (scheme, ε, seed) points")
    args = ap.parse_args(argv)
    if args.plot_only:
        _plot(json.loads(args.out.read_text())["runs"], args.out.with_suffix(".png"))
        return {}
    t0 = time.perf_counter()
    print(f"smollm2_privacy: eps {args.eps} x schemes {args.schemes} x seeds {args.seeds}", flush=True)
    runs = json.loads(args.out.read_text())["runs"] if args.extend and args.out.is_file() else []
    done = {(r["scheme"], r["epsilon_target"] or math.inf, r["seed"]) for r in runs}
    runs += [run_one(s, e, seed, args.threads) for seed in args.seeds for s in args.schemes for e in args.eps
             if (s, e, seed) not in done]
    summary = summarise(runs)
    for scheme, g in summary["goal"].items():
        print(f"  {scheme}: at eps={GOAL_EPS:g} perplexity {g['ppl_ratio']:.3f}x non-private (goal <= "
              f"{GOAL_PPL_RATIO}), {100 * g['gain_kept']:.0f}% of the gain kept (goal >= "
              f"{100 * GOAL_GAIN_KEPT:.0f}%): {'pass' if g['pass'] else 'MISS'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python -m benchmarks.smollm2_privacy " + " ".join(
            ["--eps", *map(str, args.eps), "--seeds", *map(str, args.seeds), "--schemes", *args.schemes]
            + (["--extend"] if args.extend else [])),
        "machine": platform.platform(), "note": "shared 2-core machine; lr is the demo's for every ε (not tuned)",
        "runs": runs, **summary, "run_seconds": sum(r["wall_s"] for r in runs),
        "extended_from_earlier_invocations": args.extend}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _plot(runs, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and .png in {time.perf_counter() - t0:.0f} s")
    return report


if __name__ == "__main__":
    main()
