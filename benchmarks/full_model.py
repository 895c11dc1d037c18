"""Full-model updates: secure aggregation of one whole SmolLM2-135M update (134,515,008 values) per client, streamed.

    python -m benchmarks.full_model [--clients 3 10] [--dim D] [--schemes ...] [--quick] [--out DIR]

Only the default D is written to benchmarks/results/; other sizes and ``--quick`` (D = 1e6) go to the temporary
directory unless ``--out`` says otherwise. Resumable: rows already in the output file are kept, not run again.

What a user of a bigger model meets when the whole model trains (no LoRA): every client hides and uploads D =
134.5M values a round. Each (scheme, n) round runs in its own subprocess: one real round through the sans-I/O
roles, every message as bytes, **streamed** (:func:`benchmarks._stream_round.measure_streamed`: clients encrypt
or mask part by part as the driver takes them, the aggregator adds into one running sum, within a bounded
window for the HE schemes, and the key holder decrypts part by part). All n clients, the aggregator and the key
holder share the process, and the inputs are made slice by slice from seeds, so its peak resident memory
(``ru_maxrss``) is the whole round's. A second subprocess runs the same round at D = 1000: its peak is the
interpreter and libraries, so the difference is what the protocol held.

Goal (issue 28): peak RSS of the whole round <= 4 GiB for every scheme at D = 134.5M, for n = 3 and n = 10.
Timings were taken on a shared 2-core machine; compare schemes within the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.crypto_costs import NOTE, RESULTS

SMOLLM2_PARAMETERS = 134_515_008
QUICK_OUT = Path(tempfile.gettempdir()) / "secagg-bench"
SCHEMES = ("masking32", "packed", "ckks-default")
GOAL_BYTES = 4 * 2**30

_CHILD = """
import json, resource, sys
from benchmarks._stream_round import measure_streamed
scheme, n, dim, part = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
row = measure_streamed(scheme, n, dim, part)
row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("ROW " + json.dumps(row))
"""


def _child(scheme: str, n: int, dim: int, part: int) -> dict:
    """One streamed round in a fresh interpreter: its row and peak RSS (or why it failed)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, scheme, str(n), str(dim), str(part)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        return {"scheme": scheme, "n": n, "dim": dim, "failed": proc.stderr.strip().splitlines()[-1:] or
                [f"exit {proc.returncode}"], "process_s": time.perf_counter() - t}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ROW "))
    return {"scheme": scheme, "n": n, "dim": dim, **json.loads(line[4:]), "process_s": time.perf_counter() - t}


def summarize(row: dict, baseline_rss: int) -> dict:
    """The row with what the goal needs: protocol memory, per-value seconds and bytes, the goal's verdict."""
    dim = row["dim"]
    return {**row, "baseline_rss_bytes": baseline_rss, "protocol_peak_bytes": row["peak_rss_bytes"] - baseline_rss,
            "round_server_s": row["server_s"] + row["keyholder_s"],
            "client_s_per_value": row["client_s"] / dim, "server_s_per_value": (row["server_s"] + row["keyholder_s"])
            / dim, "up_bytes_per_value": row["up_bytes"] / dim, "up_ratio_fp32": row["up_bytes"] / (4 * dim),
            "goal_peak_rss_bytes": GOAL_BYTES, "goal_met": row["peak_rss_bytes"] <= GOAL_BYTES}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--dim", type=int, default=None, help=f"values per client (default {SMOLLM2_PARAMETERS:,})")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--part-chunks", type=int, default=16, help="ciphertexts (HE) or 64 Ki-value chunks (masking) "
                                                                "per streamed part")
    ap.add_argument("--quick", action="store_true", help="D = 1e6: seconds; written to the temporary directory")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    dim = args.dim or (10**6 if args.quick else SMOLLM2_PARAMETERS)
    out = args.out or (QUICK_OUT if args.quick or dim != SMOLLM2_PARAMETERS else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "full_model.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = [r for r in old.get("rows", []) if r.get("dim") == dim and "failed" not in r and "goal_met" in r]
    t0 = time.perf_counter() - old.get("total_s", 0.0) if rows else time.perf_counter()
    print(f"full-model secure aggregation, streamed: n={args.clients}, D={dim:,} ({os.cpu_count()} CPUs; {NOTE})",
          flush=True)
    for n in args.clients:
        for scheme in args.schemes:
            if any(r["scheme"] == scheme and r["n"] == n for r in rows):
                continue
            base = _child(scheme, n, 1000, args.part_chunks)
            r = _child(scheme, n, dim, args.part_chunks)
            if "failed" in r or "failed" in base:
                print(f"  {scheme} n={n}: failed: {r.get('failed') or base.get('failed')}", flush=True)
                continue
            r = summarize(r, base["peak_rss_bytes"])
            rows.append(r)
            print(f"  {scheme:12} n={n:<3} client {r['client_s']:7.1f} s  server {r['round_server_s']:7.1f} s  "
                  f"up/client {r['up_bytes'] / 2**20:8.1f} MiB ({r['up_ratio_fp32']:.2f}x fp32)  round peak RSS "
                  f"{r['peak_rss_bytes'] / 2**30:5.2f} GiB (protocol {r['protocol_peak_bytes'] / 2**30:5.2f})  "
                  f"err {r['max_abs_error']:.1e}  [{r['process_s']:.0f} s]", flush=True)
            _write(path, args, dim, rows, t0)
    _write(path, args, dim, rows, t0)
    _plot(rows, dim, out / "full_model.png")
    print(f"wrote {path} and full_model.png in {time.perf_counter() - t0:.0f} s")


def _write(path: Path, args: argparse.Namespace, dim: int, rows: list[dict], t0: float) -> None:
    path.write_text(json.dumps({
        "command": "python -m benchmarks.full_model" + (" --quick" if args.quick else f" --dim {dim}") +
                   f" --clients {' '.join(map(str, args.clients))} --part-chunks {args.part_chunks}",
        "note": NOTE, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                  "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
        "dim": dim, "goal": "peak RSS of the whole round <= 4 GiB for every scheme, n = 3 and n = 10",
        "goal_met": bool(rows) and all(r["goal_met"] for r in rows), "rows": rows,
        "total_s": time.perf_counter() - t0}, indent=1) + "\n")


def _plot(rows: list[dict], dim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['scheme']}\nn={r['n']}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    for ax, key, label, scale in ((axes[0], "client_s", "client time (s)", 1), (axes[1], "round_server_s",
                                  "aggregator + key holder (s)", 1), (axes[2], "peak_rss_bytes",
                                                                     "round peak RSS (GiB)", 2**30)):
        ax.bar(names, [r[key] / scale for r in rows], color=[f"C{SCHEMES.index(r['scheme'])}" for r in rows])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=7)
    axes[2].axhline(GOAL_BYTES / 2**30, color="r", ls="--", lw=1, label="goal: 4 GiB")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"one streamed round, D = {dim:,} values per client (all roles in one process)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
