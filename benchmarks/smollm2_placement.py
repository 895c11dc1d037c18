"""Noise placed under secure aggregation against noise on every client, on the SmolLM2 job (issue 27.1, 27.4).

    python -m benchmarks.smollm2_placement [--eps 8 3] [--seeds 0 1 2] [--colluders 0] [--jobs 2]
    python -m benchmarks.smollm2_placement --more-data --lr-from benchmarks/results/smollm2_placement.json \\
        --out benchmarks/results/smollm2_placement_more_data.json

The ``secagg demo`` federation (:func:`benchmarks.smollm2_privacy._config`: SmolLM2-135M, LoRA rank 1 on q/v,
3 clouds, expected batch 16 x 32 tokens per client and step, C = 0.3, CKKS) with ``[dp] placement =
"distributed"`` (:func:`training.config.distribute_noise`, what ``secagg demo`` runs): 9 rounds of one noisy step each (the local placement's 3 rounds x 3 local steps: the same 9
steps and examples per client), each client adding a share N(0, (σC)²/(n − c)) to its clipped sum, the gradient
rule applying the sum with the server's Adam (eps 1e-8, the local AdamW's). σ is calibrated so that every
client's ledger ε after the 9 rounds, at σ_eff = σ·√((m_min − c)/(n − c)) and its own q, is at most the target;
``min_contributors`` = n (every round needs all three sums; a dropout aborts the round, costing no privacy beyond
its reservation).

The server lr is picked per ε on the tuning split (:func:`benchmarks.smollm2_privacy.tuning_plays`, seed 0,
``--lr-grid``), then each ε runs its best lr on the reported split for every seed. The local placement's points
and the non-private reference come from ``smollm2_privacy.json`` (same federation, same seeds, lr picked the same
way). ``--more-data`` (issue 27.3): the clients also train on every play neither split uses
(:func:`more_plays`, 26 plays, split among them by play, none held out), at the lr ``--lr-from`` chose. Writes
``benchmarks/results/smollm2_placement.json`` and ``.png`` (perplexity against ε, one line per
placement, min-max over seeds); every run is one fresh process, ``--jobs`` at a time, saved to ``--out`` as soon
as it finishes (a re-run with the same ``--out`` resumes: finished runs are kept), with a progress bar and the
time left. ``--clients`` and ``--colluders`` pick the point of issue 27.4's grid, ``--batch`` the expected batch per
client, ``--variant`` the diagnosis of issue 27.2 in this shape (``clip only``, ``non-private``: the same rounds,
steps, batches and server Adam; ``--eps`` ignored); one setting per ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.smollm2_privacy import GOAL_GAIN_KEPT, GOAL_PPL_RATIO, _config, calibrate, tuning_plays
from training.config import demo_config, distribute_noise

RESULTS = Path(__file__).resolve().parent / "results"
LR_GRID = (0.01, 0.03, 0.1)
VARIANTS = ("dp", "clip only", "non-private")
STEPS = 9


def more_plays() -> list[str]:
    """Every play that neither the reported split (the demo's plays) nor the tuning split uses (issue 27.3)."""
    from training.workload.text import shakespeare_files

    used = set(demo_config("smollm2-135m").data.plays or ()) | set(tuning_plays())
    n = demo_config("smollm2-135m").data.n_documents
    used |= set(sorted(shakespeare_files())[:n])
    return sorted(set(shakespeare_files()) - used)


def placement_config(eps: float, seed: int, lr: float, *, colluders: int, tuning: bool, threads: int = 1,
                     more_data: bool = False, clients: int = 3, batch: int = 16, variant: str = "dp"):
    """The distributed-placement run of the demo federation at server lr ``lr`` and σ calibrated for ``eps``;
    ``more_data``: the clients also train on :func:`more_plays` (split among them by play, all their blocks);
    ``clients``: more than the demo's 3 need ``more_data`` (6 plays split by play); ``batch``: the expected
    Poisson batch per client and step (the demo's 16). ``variant`` (issue 27.2, the same rounds, steps, batch
    and server optimizer): ``"clip only"`` σ = 1e-9 (the accountant refuses 0; below float32 resolution),
    ``"non-private"`` no DP (plain minibatches, no clipping); neither is a privacy point."""
    cfg = _config("ckks", seed, threads, 1.0, tuning)
    if clients > cfg.data.n_documents and not more_data:
        raise SystemExit(f"{clients} clients need more plays than the demo's {cfg.data.n_documents}: add --more-data")
    cfg.federation.clients, cfg.train.batch_size = clients, batch
    if more_data:
        cfg.data.train_only_plays, cfg.data.max_blocks_per_client = more_plays(), None
    f, d = cfg.federation, distribute_noise(cfg, lr, colluders).dp
    assert cfg.train.rounds == STEPS
    if variant != "dp":
        d.enabled, d.noise_multiplier = variant == "clip only", 1e-9
        return cfg.validate(), {"sigma": 1e-9 if d.enabled else None}
    cal = calibrate(cfg, eps)  # σ of one (σ, q) event per round, 9 rounds: what σ_eff must be
    ratio = math.sqrt((f.min_contributors - colluders) / (f.clients - colluders))
    d.noise_multiplier = cal["sigma"] / ratio
    return cfg.validate(), cal | {"sigma": d.noise_multiplier, "sigma_eff": cal["sigma"]}


def run_point(eps: float, seed: int, lr: float, colluders: int, tuning: bool, more_data: bool = False,
              clients: int = 3, batch: int = 16, variant: str = "dp") -> dict:
    """One federation; validation perplexity after every round and every client's ledger ε."""
    from training.inprocess.simulation import Runner

    cfg, cal = placement_config(eps, seed, lr, colluders=colluders, tuning=tuning, more_data=more_data,
                                clients=clients, batch=batch, variant=variant)
    t = time.perf_counter()
    runner = Runner(cfg)
    rows = runner.run()
    spent = [e for e in rows[-1].epsilon_per_client.values() if e is not None]
    row = {"placement": "distributed", "variant": variant, "epsilon_target": eps, "seed": seed, "lr": lr, "colluders": colluders,
           "split": "tuning" if tuning else "reported", "calibration": cal, "more_data": more_data,
           "clients": clients, "batch": batch,
           "initial_perplexity": math.exp(runner.initial_loss), "final_perplexity": rows[-1].perplexity,
           "perplexity_per_round": [r.perplexity for r in rows], "epsilon_spent_max": max(spent, default=None),
           "epsilon_relation": rows[-1].epsilon_relation, "wall_s": time.perf_counter() - t}
    if variant == "dp" and row["epsilon_spent_max"] > eps * 1.001:
        raise AssertionError(f"spent ε {row['epsilon_spent_max']:.3f} exceeds the target {eps}")
    spent = "n/a" if variant != "dp" else f"{row['epsilon_spent_max']:.3f}"
    print(f"  {row['split']:8} {variant} eps={_label(eps)} seed {seed} lr {lr:g}: ppl {row['initial_perplexity']:.1f} -> "
          f"{row['final_perplexity']:.1f}  eps spent {spent}  {row['wall_s']:.0f} s", flush=True)
    return row


def _key(row: dict) -> tuple:
    return (row["epsilon_target"], row["seed"], row["lr"], row["colluders"], row["split"] == "tuning",
            row.get("more_data", False), row.get("clients", 3), row.get("batch", 16), row.get("variant", "dp"))


def _map(jobs: int, calls: list[tuple], done: dict[tuple, dict], save) -> list[dict]:
    """``run_point(*call)`` for every call not already in ``done`` (resumed), ``jobs`` at a time in fresh
    processes; each finished run is saved at once (``save()``) and reported with the time left."""
    todo = [c for c in calls if c not in done]
    t0, finished = time.perf_counter(), 0

    def record(row: dict) -> None:
        nonlocal finished
        finished += 1
        done[_key(row)] = row
        save()
        left = (time.perf_counter() - t0) / finished * (len(todo) - finished)
        bar = "#" * round(20 * finished / len(todo))
        print(f"[{bar:<20}] {finished}/{len(todo)} runs, about {left / 60:.0f} min left", flush=True)

    if jobs <= 1 or len(todo) <= 1:
        for c in todo:
            record(run_point(*c))
    else:
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(run_point, *c) for c in todo]):
                record(fut.result())
    return [done[c] for c in calls]


def _label(eps: float | None) -> str:
    return "none" if eps is None else f"{eps:g}"  # None: a diagnostic variant, not a privacy point


def _spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "seeds": len(values)}


def summarise(runs: list[dict], local: dict) -> dict:
    """Per ε and placement: mean, min, max; the goal (ppl ratio to non-private, share of the gain kept)."""
    by_eps = {}
    for e in sorted({r["epsilon_target"] for r in runs if r["split"] == "reported"}, key=lambda e: e or 0.0):
        vals = [r["final_perplexity"] for r in runs if r["split"] == "reported" and r["epsilon_target"] == e]
        by_eps[_label(e)] = _spread(vals)
    ref = local["by_point"]["ckks eps=inf"]["mean"]
    start = float(np.mean([r["initial_perplexity"] for r in local["runs"]
                           if r["split"] == "reported" and r["scheme"] == "ckks" and r["epsilon_target"] is None]))
    goal = {}
    for e, p in by_eps.items():
        if e == "none":
            continue
        kept = (start - p["mean"]) / (start - ref)
        limit = GOAL_PPL_RATIO if e == "8" else 1.10
        goal[e] = {"ppl_ratio": p["mean"] / ref, "gain_kept": kept, "ratio_goal": limit,
                   "pass": p["mean"] / ref <= limit and (e != "8" or kept >= GOAL_GAIN_KEPT)}
    local_points = {k.split("=")[1]: v for k, v in local["by_point"].items() if k.startswith("ckks eps=")}
    return {"distributed": by_eps, "local": local_points, "nonprivate": ref, "initial_perplexity": start,
            "goal": goal}


def _plot(summary: dict, path: Path, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts, colour in (("local (noise on every client), batch 16", summary["local"], "C0"),
                              (f"distributed (noise under the secure sum), batch {batch}", summary["distributed"],
                               "C3")):
        eps = sorted(float(e) for e in pts if e not in ("inf", "none"))
        p = [pts[f"{e:g}"] for e in eps]
        if not p:
            continue
        ax.errorbar(eps, [x["mean"] for x in p], yerr=[[x["mean"] - x["min"] for x in p],
                                                       [x["max"] - x["mean"] for x in p]],
                    marker="o", capsize=4, color=colour, label=name)
    ax.axhline(summary["nonprivate"], color="C2", ls="--", label="non-private (local placement's shape)")
    if "none" in summary["distributed"]:  # a diagnostic variant in the distributed shape
        v = summary["distributed"]["none"]
        ax.axhspan(v["min"], v["max"], color="C1", alpha=0.2)
        ax.axhline(v["mean"], color="C1", ls=":", label=f"{summary['variant']}, distributed shape (min-max)")
    ax.set_xscale("log")
    ax.set_xlabel("ε per client (δ = 1e-5)")
    ax.set_ylabel("validation perplexity (mean, min-max over seeds)")
    ax.set_title("SmolLM2-135M DP LoRA, 3 clouds, CKKS: where the noise is added")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", nargs="+", type=float, default=[8.0, 3.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--colluders", type=int, default=0)
    ap.add_argument("--clients", type=int, default=3, help="clients of the federation (> 6 needs --more-data)")
    ap.add_argument("--batch", type=int, default=16, help="expected Poisson batch per client and step")
    ap.add_argument("--lr-grid", nargs="+", type=float, default=list(LR_GRID), help="server Adam lr candidates")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--more-data", action="store_true", help="the clients also train on every unused play")
    ap.add_argument("--lr-from", type=Path, default=None,
                    help="take each ε's server lr from this result file instead of tuning again")
    ap.add_argument("--lr", type=float, default=None, help="this server lr for every point, no tuning (a "
                    "diagnostic at the lr a DP point picked)")
    ap.add_argument("--variant", choices=VARIANTS, default="dp",
                    help="issue 27.2's diagnosis in the same shape: clipping only, or no DP (--eps is ignored)")
    ap.add_argument("--out", type=Path, default=RESULTS / "smollm2_placement.json")
    args = ap.parse_args(argv)
    if args.variant != "dp":
        args.eps = [None]
    local = json.loads((RESULTS / "smollm2_privacy.json").read_text())
    setting = {"clients": args.clients, "colluders": args.colluders, "more_data": args.more_data,
               "batch": args.batch, "variant": args.variant}
    done: dict[tuple, dict] = {}
    prior = {"wall_s": 0.0, "tuning_wall_s": 0.0}  # earlier invocations' wall time (a resumed grid adds to it)
    if args.out.exists():  # resume: every run already in --out is kept, not run again
        old = json.loads(args.out.read_text())
        if {"batch": 16, "variant": "dp"} | old.get("setting", setting) != setting:
            raise SystemExit(f"{args.out} holds runs of {old['setting']}, not {setting}: choose another --out")
        done = {_key(r): r for r in old["runs"]}
        prior = {k: old.get(k, 0.0) for k in prior}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()

    def save() -> None:
        args.out.write_text(json.dumps({"setting": setting, "partial": True, "runs": list(done.values()),
                                        "wall_s": prior["wall_s"] + time.perf_counter() - t}, indent=2))

    n, c, more, b, v = args.clients, args.colluders, args.more_data, args.batch, args.variant
    if args.lr is not None:
        tuning, best = [], {e: args.lr for e in args.eps}
    elif args.lr_from is not None:
        chosen = json.loads(args.lr_from.read_text())["lr_per_epsilon"]
        tuning, best = [], {e: chosen[_label(e)] for e in args.eps}
    else:
        tuning = _map(args.jobs, [(e, 0, lr, c, True, more, n, b, v) for e in args.eps for lr in args.lr_grid],
                      done, save)
        best = {e: min((r for r in tuning if r["epsilon_target"] == e),
                       key=lambda r: (r["final_perplexity"], r["lr"]))["lr"] for e in args.eps}
    tuned_s = prior["tuning_wall_s"] + time.perf_counter() - t
    runs = tuning + _map(args.jobs, [(e, s, best[e], c, False, more, n, b, v) for e in args.eps
                                     for s in args.seeds], done, save)
    summary = summarise(runs, local) | {"variant": v}
    record = {"command": " ".join(["python -m benchmarks.smollm2_placement", *(argv or sys.argv[1:])]), "machine": {"platform": platform.platform()},
              "setting": setting,
              "note": "shared 2-core machine; server lr per ε picked on the tuning split", "jobs": args.jobs,
              "lr_grid": args.lr_grid if tuning else None, "lr_per_epsilon": {_label(e): lr for e, lr in best.items()},
              "wall_s": prior["wall_s"] + time.perf_counter() - t, "tuning_wall_s": tuned_s,
              "point_wall_s": _spread([r["wall_s"] for r in runs]), "runs": runs, **summary}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    _plot(summary, args.out.with_suffix(".png"), args.batch)
    for e, p in summary["distributed"].items():
        if e == "none":
            print(f"{v}, distributed shape: {p['mean']:.1f} [{p['min']:.1f}, {p['max']:.1f}]  (non-private, local "
                  f"shape: {summary['nonprivate']:.1f})")
            continue
        g = summary["goal"][e]
        loc = f"{summary['local'][e]['mean']:.1f}" if e in summary["local"] else "not run"
        print(f"eps={e}: distributed {p['mean']:.1f} [{p['min']:.1f}, {p['max']:.1f}]  local {loc}  ratio "
              f"{g['ppl_ratio']:.3f}  gain kept {g['gain_kept']:.2f}")
    print(f"wrote {args.out} and .png ({record['wall_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()
