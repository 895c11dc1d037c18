"""The report of :mod:`benchmarks.privacy_utility`: summaries per run and across seeds, the plot and the tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["GOAL_EPS", "GOAL_RATIO", "summarize", "across_seeds", "seed_table", "plot", "headline"]

GOAL_EPS, GOAL_RATIO = 8.0, 1.15


def _eps_key(r: dict) -> str:
    return "inf" if r["epsilon_target"] is None else f"{r['epsilon_target']:g}"


def _run_key(r: dict) -> str:
    return f"{r['scheme']}/{r['aggregator']}" + ("" if r["init"] == "pretrained" else f"/{r['init']}")


def summarize(results: list[dict]) -> dict:
    """Per (scheme, aggregator, init): perplexity and its ratio to the non-private run at each ε, the share of
    the non-private loss improvement kept, and the ε = 8 goal; plus each scheme's perplexity over plaintext's."""
    ok = [r for r in results if r["status"] == "ok"]
    by: dict = {}
    for r in ok:
        by.setdefault(_run_key(r), {})[_eps_key(r)] = r
    out = {}
    for key, runs in sorted(by.items()):
        base = runs.get("inf")
        any_run = next(iter(runs.values()))
        s: dict = {"initial_perplexity": any_run["initial_perplexity"],
                   "perplexity": {e: runs[e]["val_perplexity"] for e in runs},
                   "val_loss": {e: runs[e]["val_loss"] for e in runs},
                   "wall_seconds": {e: runs[e]["wall_seconds"] for e in runs},
                   "accuracy": {e: runs[e]["val_next_token_accuracy"] for e in runs}}
        if base is not None:
            s["ratio_to_nonprivate"] = {e: runs[e]["val_perplexity"] / base["val_perplexity"] for e in runs}
            gain = base["initial_loss"] - base["val_loss"]
            if gain > 0:
                s["improvement_kept"] = {e: (runs[e]["initial_loss"] - runs[e]["val_loss"]) / gain for e in runs}
            g = runs.get(f"{GOAL_EPS:g}")
            if g is not None:
                s["goal_ratio_at_eps8"] = g["val_perplexity"] / base["val_perplexity"]
                s["goal_met"] = bool(s["goal_ratio_at_eps8"] <= GOAL_RATIO)
        out[key] = s
    cross = {}
    for r in ok:
        if r["scheme"] != "plaintext" or r["init"] != "pretrained":
            continue
        vals = {o["scheme"]: o["val_perplexity"] / r["val_perplexity"] for o in ok
                if (o["aggregator"], _eps_key(o), o["init"]) == (r["aggregator"], _eps_key(r), r["init"])}
        if len(vals) > 1:
            cross[f"{r['aggregator']}@eps={_eps_key(r)}"] = vals
    return {"by_run": out, "scheme_ratio_to_plaintext": cross}


def across_seeds(by_seed: dict) -> dict:
    """Per (scheme, aggregator, init) and ε: mean, min and max over seeds of the perplexity, of its ratio to the
    same seed's non-private run and of the share of the non-private improvement kept."""
    out: dict = {}
    for summ in by_seed.values():
        for key, s in summ["by_run"].items():
            cell = out.setdefault(key, {})
            for metric in ("perplexity", "ratio_to_nonprivate", "improvement_kept"):
                for e, v in s.get(metric, {}).items():
                    cell.setdefault(metric, {}).setdefault(e, []).append(v)
    for cell in out.values():
        for metric, per in cell.items():
            for e, vals in per.items():
                per[e] = {"values": vals, "mean": float(np.mean(vals)), "min": min(vals), "max": max(vals)}
        r8 = cell.get("ratio_to_nonprivate", {}).get(f"{GOAL_EPS:g}")
        if r8 is not None:
            cell["goal_met_mean"] = bool(r8["mean"] <= GOAL_RATIO)
    return out


def seed_table(spread: dict, seeds: list[int]) -> str:
    lines = [f"across seeds {seeds}: mean [min, max]",
             f"{'scheme/aggregator':<30} {'ppl at ε=8':>24} {'ppl at ε=∞':>24} {'ppl8/ppl∞':>22} {'kept@8':>20}"]
    for key, cell in spread.items():
        def fmt(metric: str, e: str, spec: str) -> str:
            m = cell.get(metric, {}).get(e)
            return "-" if m is None else f"{m['mean']:{spec}} [{m['min']:{spec}}, {m['max']:{spec}}]"
        lines.append(f"{key:<30} {fmt('perplexity', '8', '.1f'):>24} {fmt('perplexity', 'inf', '.1f'):>24} "
                     f"{fmt('ratio_to_nonprivate', '8', '.3f'):>22} {fmt('improvement_kept', '8', '.2f'):>20}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r["status"] == "ok"]
    finite = sorted({r["epsilon_target"] for r in ok if r["epsilon_target"] is not None})
    xs = {e: i for i, e in enumerate(finite)}
    inf_x = len(finite)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for key in sorted({_run_key(r) for r in ok}):
        pts = sorted((inf_x if r["epsilon_target"] is None else xs[r["epsilon_target"]], r["val_perplexity"])
                     for r in ok if _run_key(r) == key)
        style = ":" if key.endswith(("scratch", "lora")) else "-" if "/fedavg" in key else "--"
        ax.plot(*zip(*pts), marker="o", linestyle=style, label=key)
    starts = {r["initial_perplexity"] for r in ok if r["init"] != "scratch"}
    if starts:
        ax.axhline(min(starts), color="grey", linewidth=0.8, label="pre-trained start (public data)")
    ax.set_xticks(list(xs.values()) + [inf_x], [f"{e:g}" for e in finite] + ["∞ (no DP)"])
    ax.set_xlabel("ε (δ = 1e-5), per client, whole run")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Privacy vs utility: tiny GPT-2, 3 clouds, DP-SGD + secure aggregation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline(report: dict) -> str:
    """A compact table: perplexity per ε for every (scheme, aggregator, init), the ratio at ε = 8, the goal."""
    s = report["summary"]["by_run"]
    eps = [("inf" if e is None else f"{e:g}") for e in report["grid"]["epsilons"]]
    head = f"{'scheme/aggregator':<30} {'start':>7} " + " ".join(f"{'ε=' + e:>8}" for e in eps) + \
        f" {'ppl8/ppl∞':>9} {'kept@8':>6} {'s/run':>6}  goal(<= {GOAL_RATIO})"
    lines = [head, "-" * len(head)]
    for key, v in s.items():
        cells = " ".join(f"{v['perplexity'][e]:>8.1f}" if e in v["perplexity"] else f"{'-':>8}" for e in eps)
        ratio = v.get("goal_ratio_at_eps8")
        kept = v.get("improvement_kept", {}).get(f"{GOAL_EPS:g}")
        goal = "" if ratio is None else ("MET" if v["goal_met"] else "NOT met")
        wall = sum(v["wall_seconds"].values()) / len(v["wall_seconds"])
        lines.append(f"{key:<30} {v['initial_perplexity']:>7.1f} {cells} "
                     f"{'-' if ratio is None else format(ratio, '.3f'):>9} "
                     f"{'-' if kept is None else format(kept, '.2f'):>6} {wall:>6.0f}  {goal}")
    for key, ratios in report["summary"]["scheme_ratio_to_plaintext"].items():
        lines.append(f"perplexity / plaintext's, {key}: " + ", ".join(f"{s} {r:.3f}" for s, r in ratios.items()
                                                                     if s != "plaintext"))
    return "\n".join(lines)
