"""The report of :mod:`benchmarks.paper_tables`: per-rule summaries against the paper's Tables 2 and 3, the spread
over seeds, the differences to the paper, and the plot."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["LABEL", "PAPER", "summarize", "across_seeds", "seed_table", "tables", "differences", "plot"]

LABEL = {"fedavg": "FedAvg", "loss-weighted": "Dynamic Weighted", "gradient": "Gradient Aggregation",
         "gradient-adam": "Gradient + server Adam"}
# The paper's Tables 2 and 3 (3 clouds, WikiText-103, a pre-trained LLM, 100 rounds).
PAPER = {"fedavg": {"comm_gb": 4.5, "hours": 12.0, "accuracy": 87.5, "loss": 0.34},
         "loss-weighted": {"comm_gb": 3.8, "hours": 10.5, "accuracy": 90.2, "loss": 0.29},
         "gradient": {"comm_gb": 3.6, "hours": 9.8, "accuracy": 91.5, "loss": 0.27}}
PAPER["gradient-adam"] = PAPER["gradient"]


def to_target(run: dict, target: float) -> dict:
    """Rounds, bytes and modelled seconds until the validation loss first reaches ``target`` (None if never)."""
    for r, loss in enumerate(run["loss_curve"]):
        if loss <= target + 1e-12:
            return {"rounds": r + 1, "bytes": run["bytes_curve"][r], "modelled_seconds": run["sim_time_curve"][r]}
    return {"rounds": None, "bytes": None, "modelled_seconds": None}


def summarize(runs: list[dict]) -> dict:
    """Per partition group: the common target loss, each run's cost to reach it, and ratios to FedAvg."""
    out: dict = {}
    for part in dict.fromkeys(r["partition"] for r in runs):
        group = [r for r in runs if r["partition"] == part]
        target = max(r["val_loss"] for r in group)
        base = next((r for r in group if r["aggregator"] == "fedavg"), None)
        rows = {}
        for r in group:
            tt = to_target(r, target)
            row = {"comm_mb": (r["bytes_up"] + r["bytes_down"]) / 1e6, "modelled_seconds": r["modelled_seconds"],
                   "accuracy_pct": 100 * r["val_next_token_accuracy"], "loss": r["val_loss"],
                   "perplexity": r["val_perplexity"], "to_target": tt}
            if base is not None:
                bt = to_target(base, target)
                row["ratio_to_fedavg"] = {
                    "comm": row["comm_mb"] * 1e6 / (base["bytes_up"] + base["bytes_down"]),
                    "modelled_seconds": r["modelled_seconds"] / base["modelled_seconds"],
                    "comm_to_target": tt["bytes"] / bt["bytes"] if tt["bytes"] and bt["bytes"] else None,
                    "time_to_target": tt["modelled_seconds"] / bt["modelled_seconds"]
                    if tt["modelled_seconds"] and bt["modelled_seconds"] else None}
            rows[r["aggregator"]] = row
        out[part] = {"target_loss": target, "rows": rows}
    dyn = {}
    for a in dict.fromkeys(r["aggregator"] for r in runs):
        by = {r["partition"]: r for r in runs if r["aggregator"] == a}
        if "fixed" in by and "dynamic" in by:
            f, d = by["fixed"], by["dynamic"]
            dyn[a] = {"modelled_seconds_ratio": d["modelled_seconds"] / f["modelled_seconds"],
                      "mean_round_seconds": {k: float(np.mean(v["round_modelled_seconds"])) for k, v in by.items()},
                      "loss": {k: v["val_loss"] for k, v in by.items()},
                      "slowest_cloud": {k: Counter(v["slowest_cloud_per_round"]).most_common(1)[0][0]
                                        for k, v in by.items()}}
    if dyn:
        out["dynamic_vs_fixed"] = dyn
    return out


SEED_METRICS = (("loss", ("loss",)), ("accuracy_pct", ("accuracy_pct",)),
                ("modelled_seconds", ("modelled_seconds",)),
                ("comm_to_target_vs_fedavg", ("ratio_to_fedavg", "comm_to_target")),
                ("time_to_target_vs_fedavg", ("ratio_to_fedavg", "time_to_target")))


def across_seeds(by_seed: dict) -> dict:
    """Per partition and aggregator: mean, min and max over seeds of the headline numbers (None where a seed's
    run never reached its group's target)."""
    out: dict = {}
    first = next(iter(by_seed.values()))
    for part, grp in first.items():
        if part == "dynamic_vs_fixed":
            continue
        for agg in grp["rows"]:
            cell = out.setdefault(part, {}).setdefault(agg, {})
            for name, path in SEED_METRICS:
                vals = []
                for summ in by_seed.values():
                    v = summ.get(part, {}).get("rows", {}).get(agg)
                    for key in path:
                        v = None if v is None else v.get(key)
                    vals.append(v)
                got = [v for v in vals if v is not None]
                cell[name] = {"values": vals, "mean": float(np.mean(got)) if got else None,
                              "min": min(got) if got else None, "max": max(got) if got else None}
    return out


def seed_table(spread: dict, aggregators: list[str], seeds: list[int]) -> str:
    lines = ["", f"Across seeds {seeds}: mean [min, max]"]
    for part, rows in spread.items():
        lines.append(f"{part:<14} {'final loss':>26} {'next-token acc %':>24} {'bytes to target / FedAvg':>28}")
        for a in aggregators:
            if a not in rows:
                continue
            c = rows[a]
            cells = []
            for key, spec in (("loss", ".3f"), ("accuracy_pct", ".1f"), ("comm_to_target_vs_fedavg", ".2f")):
                m = c[key]
                cells.append(f"{_fmt(m['mean'], spec)} [{_fmt(m['min'], spec)}, {_fmt(m['max'], spec)}]")
            lines.append(f"  {LABEL[a]:<22} {cells[0]:>16} {cells[1]:>24} {cells[2]:>28}")
    return "\n".join(lines)


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _paper_and_ours(rows: dict, aggregators: list[str]):
    """(rule, the paper's row, our row) for each rule that was run, in ``aggregators`` order."""
    return [(a, PAPER[a], rows[a]) for a in aggregators if a in rows]


def tables(summary: dict, aggregators: list[str]) -> str:
    """Tables 2 and 3 in the paper's layout, paper value next to ours, with ratios to FedAvg for comparison."""
    lines = []
    for part, grp in summary.items():
        if part == "dynamic_vs_fixed":
            continue
        rows = grp["rows"]
        lines += ["", f"Table 2 ({part} partitioning): Communication Overhead and Training Time",
                  f"{'Aggregation Algorithm':<22} {'paper GB':>8} {'ours MB':>9} {'ratio p/o':>11} "
                  f"{'ours MB to tgt':>14} {'paper h':>7} {'ours s':>8} {'ratio p/o':>11} {'s to tgt':>8}"]
        for a, p, o in _paper_and_ours(rows, aggregators):
            rr = o.get("ratio_to_fedavg", {})
            tt = o["to_target"]
            lines.append(
                f"{LABEL[a]:<22} {p['comm_gb']:>8.1f} {o['comm_mb']:>9.1f} "
                f"{p['comm_gb'] / PAPER['fedavg']['comm_gb']:>5.2f}/{_fmt(rr.get('comm'), '.2f'):<5} "
                f"{_fmt(tt['bytes'] and tt['bytes'] / 1e6, '.1f'):>14} {p['hours']:>7.1f} "
                f"{o['modelled_seconds']:>8.1f} {p['hours'] / PAPER['fedavg']['hours']:>5.2f}/"
                f"{_fmt(rr.get('modelled_seconds'), '.2f'):<5} {_fmt(tt['modelled_seconds'], '.1f'):>8}")
        lines += ["", f"Table 3 ({part} partitioning): Model Convergence Accuracy and Loss "
                      f"(ours: next-token accuracy and validation loss in nats/token; target {grp['target_loss']:.3f})",
                  f"{'Aggregation Algorithm':<22} {'paper acc %':>11} {'ours acc %':>10} {'paper loss':>10} "
                  f"{'ours loss':>9} {'ours ppl':>8} {'rounds to tgt':>13}"]
        for a, p, o in _paper_and_ours(rows, aggregators):
            lines.append(f"{LABEL[a]:<22} {p['accuracy']:>11.1f} {o['accuracy_pct']:>10.1f} {p['loss']:>10.2f} "
                         f"{o['loss']:>9.3f} {o['perplexity']:>8.1f} {_fmt(o['to_target']['rounds'], 'd'):>13}")
    if "dynamic_vs_fixed" in summary:
        lines += ["", "Dynamic (capacity-aware) vs fixed (equal IID) partitioning: modelled training time"]
        for a, d in summary["dynamic_vs_fixed"].items():
            lines.append(f"{LABEL[a]:<22} ratio {d['modelled_seconds_ratio']:.2f} (mean round "
                         f"{d['mean_round_seconds']['fixed']:.2f} s -> {d['mean_round_seconds']['dynamic']:.2f} s, "
                         f"slowest cloud {d['slowest_cloud']['fixed']} -> {d['slowest_cloud']['dynamic']}), final loss "
                         f"{d['loss']['fixed']:.3f} -> {d['loss']['dynamic']:.3f}")
    return "\n".join(lines)


def differences(summary: dict, aggregators: list[str], gradient_is_fedavg: bool) -> list[str]:
    """Plain statements of where our measurements disagree with the paper's claims (computed, not canned).
    ``gradient_is_fedavg``: the gradient row ran formula 3 with server SGD at η = 1 (algebraically FedAvg), so
    its distance to FedAvg is the run-to-run noise floor of its partition group."""
    notes = []
    for part, grp in summary.items():
        rows = grp.get("rows", {})
        if gradient_is_fedavg and "fedavg" in rows and "gradient" in rows:
            floor = abs(rows["gradient"]["loss"] - rows["fedavg"]["loss"])
            why = ("capacity re-balancing follows measured, load-dependent step times, so these runs are not "
                   "reproducible; differences of this size within the group are noise" if part == "dynamic" else
                   "runs are deterministic up to CKKS noise; seed-to-seed spread is in the across-seeds table")
            notes.append(f"[{part}] noise floor: Gradient Aggregation at η = 1 is algebraically FedAvg; their final "
                         f"losses differ by {floor:.4f} ({why}).")
    for part, grp in summary.items():
        if part == "dynamic_vs_fixed" or "fedavg" not in grp["rows"]:
            continue
        rows = grp["rows"]
        for a in aggregators:
            if a == "fedavg" or a not in rows:
                continue
            rr, p = rows[a]["ratio_to_fedavg"], PAPER[a]
            paper_comm = p["comm_gb"] / PAPER["fedavg"]["comm_gb"]
            if abs(rr["comm"] - 1) >= 0.02:
                notes.append(f"[{part}] {LABEL[a]}: {rr['comm']:.3f}x FedAvg's bytes over the same rounds (paper "
                             f"{paper_comm:.2f}x).")
            if rr["comm_to_target"] is not None:
                c = rr["comm_to_target"]
                verdict = "fewer" if c < 0.98 else "more" if c > 1.02 else "the same"
                notes.append(f"[{part}] {LABEL[a]}: {rr['comm_to_target']:.2f}x FedAvg's bytes to reach the "
                             f"target loss ({verdict}; paper {paper_comm:.2f}x).")
            dl = rows[a]["loss"] - rows["fedavg"]["loss"]
            da = rows[a]["accuracy_pct"] - rows["fedavg"]["accuracy_pct"]
            notes.append(f"[{part}] {LABEL[a]}: final loss {rows[a]['loss']:.3f} vs FedAvg {rows['fedavg']['loss']:.3f}"
                         f" ({dl:+.3f}), next-token accuracy {rows[a]['accuracy_pct']:.1f}% vs "
                         f"{rows['fedavg']['accuracy_pct']:.1f}% ({da:+.1f} points); the paper reports "
                         f"{p['loss'] - PAPER['fedavg']['loss']:+.2f} loss and "
                         f"{p['accuracy'] - PAPER['fedavg']['accuracy']:+.1f} points.")
    same = all(abs(g["rows"][a]["ratio_to_fedavg"]["comm"] - 1) < 0.02 for k, g in summary.items()
               if k != "dynamic_vs_fixed" for a in g["rows"] if "ratio_to_fedavg" in g["rows"][a])
    if same:
        notes.insert(0, "Communication: every aggregator moves the same bytes per round (within 2%): each client "
                        "uploads one encrypted vector of the model's size whatever the rule; the paper's 0.84x / 0.80x "
                        "for a fixed number of rounds do not reproduce. Only bytes-to-target-loss can differ.")
    for a, d in summary.get("dynamic_vs_fixed", {}).items():
        why = ("; shares follow compute speed only, so the fastest-compute cloud, which has the slowest up-link, "
               "receives more work" if d["modelled_seconds_ratio"] > 1 else "")
        notes.append(f"Partitioning ({LABEL[a]}): capacity-aware partitioning changed modelled training time by "
                     f"{d['modelled_seconds_ratio']:.2f}x (slowest cloud {d['slowest_cloud']['fixed']} -> "
                     f"{d['slowest_cloud']['dynamic']}){why}; the paper reports it as a gain.")
    notes.append("Scale: the paper's absolute values (GB, hours, 87-92% accuracy, loss ~0.3) belong to a pre-trained "
                 "LLM over 100 rounds; ours are a from-scratch tiny GPT-2 for a few rounds on 2 CPU cores, so only "
                 "ratios to FedAvg are comparable, and next-token accuracy of a tiny model is far below 87%.")
    return notes


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(r["partition"] for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {p: s for p, s in zip(parts, ["-", ":", "--"])}
    colors = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(r["aggregator"] for r in runs))}
    for r in runs:
        kw = dict(linestyle=styles[r["partition"]], color=colors[r["aggregator"]], marker="o", markersize=3,
                  label=f"{LABEL[r['aggregator']]} / {r['partition']}")
        axes[0].plot(range(1, len(r["loss_curve"]) + 1), r["loss_curve"], **kw)
        axes[1].plot(r["sim_time_curve"], r["loss_curve"], **kw)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("modelled cross-cloud training time (s)")
    for ax in axes:
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Paper Tables 2-3 at 2-core scale: 3 clouds, tiny GPT-2, secure aggregation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
