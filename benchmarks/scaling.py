"""Scaling: how one round's time and bytes grow with the number of clients n and with the update size D.

    python -m benchmarks.scaling [--quick]
    python -m benchmarks.scaling --full-model   # one whole SmolLM2-135M update per client (benchmarks.full_model)

Every point is one real in-process round through the sans-I/O roles (every message as bytes; see
:func:`benchmarks.crypto_costs.measure_round`). "Round time" is the wall time of the whole simulated round with
every role run one after another on this machine (so it is the sum of all clients' and the server's work, not a
networked latency); server time is the aggregator's (plus the key holder's, for HE) share of it. Bytes are all
messages of the round; round time includes the round's set-up (HE key generation). Slopes are least-squares fits
of log(y) on log(x) over all points and over the largest three (the asymptote, free of fixed per-round costs); a
slope of 1 is linear growth.

* vs n at small D: masking (32-bit ring, SecAgg+ graph with the default degree k = 2*ceil(log2 n) + 1) up to
  n = 1000 simulated clients, packed BFV up to 1000 and CKKS add-only up to 300.
* vs D at n = 10: plaintext, masking, packed, CKKS add-only and CKKS default.

Timings were taken on a shared 2-core machine; compare slopes and ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.crypto_costs import NOTE, RESULTS, default_degree, measure_round

QUICK_OUT = Path(tempfile.gettempdir()) / "secagg-bench"
GRIDS = {
    "default": {"dim_for_n": 1000, "ns": {"masking32": [10, 30, 100, 300, 1000], "packed": [10, 30, 100, 300, 1000],
                                          "ckks-add-only": [10, 30, 100, 300]},
                "n_for_d": 10, "dims": {"plaintext": [10**3, 10**4, 10**5, 10**6], "masking32": [10**3, 10**4, 10**5, 10**6],
                                        "packed": [10**3, 10**4, 10**5, 10**6], "ckks-add-only": [10**3, 10**4, 10**5, 10**6],
                                        "ckks-default": [10**3, 10**4, 10**5, 10**6]}},
    "quick": {"dim_for_n": 500, "ns": {"masking32": [5, 10, 20, 40], "packed": [5, 10, 20, 40]},
              "n_for_d": 5, "dims": {"masking32": [10**3, 10**4, 10**5], "packed": [10**3, 10**4, 10**5]}},
}


def _point(scheme: str, n: int, dim: int) -> dict:
    r = measure_round(scheme, n, dim)
    total_bytes = n * (r["up_bytes"] + r["down_bytes"]) + r["server_to_keyholder_bytes"]
    row = {"scheme": scheme, "n": n, "dim": dim, "round_s": r["wall_s"], "server_s": r["server_s"] + r["keyholder_s"],
           "client_s": r["client_s"], "round_bytes": total_bytes, "bytes_per_client": r["up_bytes"] + r["down_bytes"],
           "max_abs_error": r["max_abs_error"]}
    if scheme.startswith("masking"):
        row["k"] = default_degree(n)
    print(f"  {scheme:13} n={n:<5} D={dim:<8.0e} round {row['round_s']:8.3f}s  server {row['server_s']:7.3f}s  "
          f"client {row['client_s']:7.4f}s  {total_bytes / 1e6:9.2f} MB  err {row['max_abs_error']:.1e}", flush=True)
    return row


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _fits(rows: list[dict], var: str) -> dict:
    out = {}
    for scheme in sorted({r["scheme"] for r in rows}):
        pts = sorted((r for r in rows if r["scheme"] == scheme), key=lambda r: r[var])
        if len(pts) >= 2:
            xs = [r[var] for r in pts]
            keys = ("round_s", "server_s", "client_s", "round_bytes", "bytes_per_client")
            out[scheme] = {key: slope(xs, [r[key] for r in pts]) for key in keys}
            # over the largest three points only: the asymptotic growth, without fixed per-round costs
            out[scheme] |= {f"{key}_tail": slope(xs[-3:], [r[key] for r in pts[-3:]]) for key in keys}
    return out


def _plot(by_n: list[dict], by_d: list[dict], fits: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for col, (rows, var, label) in enumerate(((by_n, "n", "n (clients)"), (by_d, "dim", "D (values per update)"))):
        for row, (key, ylabel) in enumerate((("round_s", "round time (s)"), ("round_bytes", "round bytes"))):
            ax = axes[row][col]
            for scheme in sorted({r["scheme"] for r in rows}):
                pts = sorted((r for r in rows if r["scheme"] == scheme), key=lambda r: r[var])
                s, tail = fits[var][scheme][key], fits[var][scheme][f"{key}_tail"]
                ax.plot([r[var] for r in pts], [r[key] for r in pts], "o-",
                        label=f"{scheme} (slope {s:.2f}, top 3 points {tail:.2f})")
            ax.set(xscale="log", yscale="log", xlabel=label, ylabel=ylabel, title=f"{ylabel} vs {var}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"secagg scaling (simulated rounds, all roles in one process); {NOTE}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seconds: small n and D, masking and packed only")
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default {RESULTS}; --quick: {QUICK_OUT})")
    ap.add_argument("--full-model", action="store_true",
                    help="the full-model case instead: n=3, D=134,515,008 per client, peak memory per scheme")
    args = ap.parse_args()
    if args.full_model:
        from benchmarks import full_model

        full_model.main((["--quick"] if args.quick else []) + (["--out", str(args.out)] if args.out else []))
        return
    grid = GRIDS["quick" if args.quick else "default"]
    t0 = time.perf_counter()
    print(f"scaling ({os.cpu_count()} CPUs; {NOTE})", flush=True)
    for scheme in sorted(set(grid["ns"]) | set(grid["dims"])):
        measure_round(scheme, 3, 500)  # warm-up
    print(f"vs n at D={grid['dim_for_n']}:")
    by_n = [_point(s, n, grid["dim_for_n"]) for s, ns in grid["ns"].items() for n in ns]
    print(f"vs D at n={grid['n_for_d']}:")
    by_d = [_point(s, grid["n_for_d"], d) for s, ds in grid["dims"].items() for d in ds]
    fits = {"n": _fits(by_n, "n"), "dim": _fits(by_d, "dim")}
    print("\nfitted log-log slopes, all points / largest three (1 = linear):")
    for var, per in fits.items():
        for scheme, f in per.items():
            print(f"  vs {var:3} {scheme:13} " + "  ".join(
                f"{label} {f[key]:5.2f}/{f[key + '_tail']:5.2f}" for key, label in (
                    ("round_s", "round time"), ("server_s", "server"), ("client_s", "client"),
                    ("round_bytes", "round bytes"), ("bytes_per_client", "bytes/client"))))
    out = args.out or (QUICK_OUT if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({
        "command": "python -m benchmarks.scaling" + (" --quick" if args.quick else ""), "note": NOTE,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "grid": grid,
        "vs_n": by_n, "vs_dim": by_d, "slopes": fits, "total_s": time.perf_counter() - t0}, indent=1) + "\n")
    _plot(by_n, by_d, fits, out / "scaling.png")
    print(f"wrote {out / 'scaling'}.json and .png in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
