"""Whole SecAgg+ rounds, ours against Flower's, like for like in one run: every stage of every party counted.

    python -m benchmarks.secaggplus_whole [--quick] [--dim 1000000] [--ns 10 100] [--repeats 3]

Per n, the same cohort, D, graph degree k and threshold t on both sides (our default k for n, raised by one
when odd and below n - 1, since Flower's graph is a ring of ``num_shares // 2`` neighbours on each side, and
our default t for that k; Flower's ``num_shares = k + 1``, ``reconstruction_threshold = t``), no dropout, one
round per repeat:

* ours: our hardened default (signed masking, :class:`secagg.masking.MaskingClient`/``MaskingServer``) through
  ``benchmarks.secagg_micro.masking_round``: every message as bytes, every client call timed on its own;
* Flower 1.42: ``SecAggPlusWorkflow`` + ``secaggplus_mod`` driven by ``benchmarks._flower_direct`` (no runtime in
  between; protobuf (de)serialisation of every message counted, as in a deployment).

Reported (CPU seconds of this single-threaded process, the median repeat and the range over repeats):

* whole client: the sum of one client's calls over the round (encoding/quantization, key agreement, signatures
  (ours), Shamir sharing, masking, unmasking, (de)serialisation), the median over clients;
* whole server: everything the server does in the round (for Flower: the workflow and strategy less the client
  calls, including its message serialisation);
* whole round: all clients plus the server (the CPU a deployment spends on the protocol);
* bytes per client up and down (ours: our wire messages; Flower's: protobuf messages), and the largest error
  of the weighted mean against numpy.

Updates are uniform in [-1, 1] (float32 for Flower, as its NumPyClient returns them; float64 for ours), weights
integers 1..7 (Flower's num_examples). Both sides run in the same process, interleaved per repeat. Writes
benchmarks/results/secaggplus_whole.json and .png (``--quick``: D = 100,000, n = 10, one repeat, under the
temporary directory, never over committed results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._aes_probe import AesProbe
from benchmarks._flower_direct import flower_secaggplus_round
from benchmarks.secagg_micro import masking_round
from secagg.masking import MaskingConfig

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"client": 10.0, "round": 12.0}  # Flower / ours at n = 100 (issue 13)
KEYS = ("client_s", "server_s", "round_s", "bytes_up_per_client", "bytes_down_per_client")


def _flower(n: int, dim: int, k: int, t: int) -> dict:
    ups = {i: np.random.default_rng(i).uniform(-1, 1, dim).astype(np.float32) for i in range(n)}
    ws = {i: 1 + i % 7 for i in range(n)}
    res = flower_secaggplus_round(ups, ws, k=k, t=t)
    exact = sum(ws[i] * ups[i].astype(np.float64) for i in range(n)) / sum(ws.values())
    return {"client_s": statistics.median(res["client_cpu_s"].values()), "server_s": res["server_cpu_s"],
            "round_s": res["round_cpu_s"], "wall_s": res["wall_s"],
            "bytes_up_per_client": statistics.mean(res["bytes_up"].values()),
            "bytes_down_per_client": statistics.mean(res["bytes_down"].values()),
            "max_abs_error": float(np.max(np.abs(res["mean"].astype(np.float64) - exact)))}


def _ours(n: int, dim: int, k: int, round_id: int) -> dict:
    r = masking_round(n, dim, 0.0, round_id=round_id, probe=AesProbe(4 * dim), neighbors=k)
    server = sum(r["server_stage_s"].values())
    return {"client_s": r["client_s_median"], "server_s": server, "round_s": r["client_s_sum"] + server,
            "bytes_up_per_client": r["bytes_up_per_client"], "bytes_down_per_client": r["bytes_down_per_client"],
            "max_abs_error": r["max_abs_error"], "k": r["k"], "t": r["t"]}


def _median_repeat(reps: list[dict], key: str) -> dict:
    row = dict(sorted(reps, key=lambda x: x[key])[len(reps) // 2])
    row["range"] = {k: [min(x[k] for x in reps), max(x[k] for x in reps)] for k in KEYS}
    return row


def run(ns: list[int], dim: int, repeats: int) -> list[dict]:
    out = []
    for n in ns:
        k = int(MaskingConfig(participants=tuple(range(n)), dim=dim).neighbors)  # type: ignore[arg-type]
        if k < n - 1 and k % 2:
            k += 1  # Flower's graph is a ring with num_shares // 2 neighbours each side: an even degree
        cfg = MaskingConfig(participants=tuple(range(n)), dim=dim, neighbors=k)
        k, t = int(cfg.neighbors), int(cfg.t)  # type: ignore[arg-type]
        ours, flower, ratios = [], [], []
        for j in range(repeats):
            ours.append(_ours(n, dim, k, round_id=j))
            flower.append(_flower(n, dim, k, t))
            ratios.append({key: flower[-1][key] / ours[-1][key] for key in KEYS})
            print(f"n={n} repeat {j + 1}/{repeats}: client {ours[-1]['client_s'] * 1e3:.1f} vs "
                  f"{flower[-1]['client_s'] * 1e3:.1f} ms, server {ours[-1]['server_s']:.2f} vs "
                  f"{flower[-1]['server_s']:.2f} s", flush=True)
        out.append({"n": n, "dim": dim, "k": k, "t": t, "flower_num_shares": k + 1,
                    "ours": _median_repeat(ours, "round_s"), "flower": _median_repeat(flower, "round_s"),
                    "flower_over_ours": {key: statistics.median(r[key] for r in ratios) for key in KEYS},
                    "flower_over_ours_range": {key: [min(r[key] for r in ratios), max(r[key] for r in ratios)]
                                               for key in KEYS}})
    return out


def verdicts(rows: list[dict]) -> list[dict]:
    big = [r for r in rows if r["n"] == 100]
    return [{"target": f"Flower / ours, whole {what}, n=100", "goal": f">= {goal}x",
             "measured": r["flower_over_ours"][f"{what}_s"], "pass": r["flower_over_ours"][f"{what}_s"] >= goal}
            for r in big for what, goal in TARGETS.items()]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, key, title in zip(axes, ("client_s", "server_s", "round_s"), ("whole client", "whole server",
                                                                         "whole round (all clients + server)")):
        xs = np.arange(len(rows))
        for off, side, colour in ((-0.2, "ours", "C0"), (0.2, "flower", "C3")):
            vals = [r[side][key] for r in rows]
            lo = [v - r[side]["range"][key][0] for v, r in zip(vals, rows)]
            hi = [r[side]["range"][key][1] - v for v, r in zip(vals, rows)]
            ax.bar(xs + off, vals, 0.4, yerr=[lo, hi], color=colour, label="ours (signed)" if side == "ours"
                   else "Flower 1.42 SecAgg+")
        for x, r in zip(xs, rows):
            ax.text(x + 0.2, r["flower"][key] * 1.08, f"{r['flower_over_ours'][key]:.1f}x", ha="center", va="bottom")
        ax.set_xticks(xs, [f"n={r['n']}\nk={r['k']} t={r['t']}" for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("CPU seconds")
        ax.set_title(title)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"SecAgg+ round, D={rows[0]['dim']:,}: Flower / ours (median of repeats, bars: range)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dim, ns, repeats = (100_000, [10], 1) if args.quick else (args.dim, args.ns, args.repeats)
    rows = run(ns, dim, repeats)
    print(f"\n{'n':>4} {'k':>3} {'t':>3} {'':7} {'client ms':>10} {'server s':>9} {'round s':>8} {'MB up':>7} "
          f"{'max err':>8}")
    for r in rows:
        for side in ("ours", "flower"):
            m = r[side]
            print(f"{r['n']:4d} {r['k']:3d} {r['t']:3d} {side:7} {m['client_s'] * 1e3:10.1f} {m['server_s']:9.3f} "
                  f"{m['round_s']:8.2f} {m['bytes_up_per_client'] / 1e6:7.2f} {m['max_abs_error']:8.1e}")
        f = r["flower_over_ours"]
        print(f"{'':16}Flower / ours: client {f['client_s']:.1f}x, server {f['server_s']:.1f}x, "
              f"round {f['round_s']:.1f}x, upload {f['bytes_up_per_client']:.2f}x")
    checks = verdicts(rows)
    for v in checks:
        print(f"{v['target']:40} {v['goal']:>8} {v['measured']:8.1f}  {'PASS' if v['pass'] else 'MISS'}")
    out_dir = Path(tempfile.gettempdir()) / "secagg-bench" if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    import flwr

    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "note": "shared machine"},
           "command": "python -m benchmarks.secaggplus_whole" + (" --quick" if args.quick else ""),
           "flwr": flwr.__version__, "quick": args.quick, "repeats": repeats, "verdicts": checks, "rows": rows}
    (out_dir / "secaggplus_whole.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, out_dir / "secaggplus_whole.png")
    print(f"wrote {out_dir / 'secaggplus_whole.json'} and .png")


if __name__ == "__main__":
    main()
