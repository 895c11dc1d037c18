"""Full-model updates: secure aggregation of one whole SmolLM2-135M update (134,515,008 values) per client.

    python -m benchmarks.full_model [--clients 3] [--dim D] [--quick]

Only the default D is written to benchmarks/results/; other sizes and ``--quick`` (D = 1e6) go to the temporary
directory unless ``--out`` says otherwise.

What a user of a bigger model meets when the whole model trains (no LoRA): every client hides and uploads D =
134.5M values a round. Each scheme's round runs in its own subprocess (one real round through the sans-I/O roles,
every message as bytes, :func:`benchmarks.crypto_costs.measure_round`), which reports its peak resident memory
(``ru_maxrss``); a second subprocess that only builds the same inputs gives the harness' own share, so the
difference is what the protocol's roles held. In this in-process simulation all n clients, the aggregator and the
key holder share one process, so the peak is the whole round's; per value and per client it says where one
24 GB machine stops.

* masking (32-bit ring) and packed BFV: measured at full D.
* CKKS default: **derived** per ciphertext from a measured D = 1e6 round (13x float32: n uploads of 7 GB do
  not fit beside each other in 24 GB), memory likewise scaled, marked ``"derived"``.

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

from benchmarks.crypto_costs import NOTE, RESULTS, _derive

SMOLLM2_PARAMETERS = 134_515_008
QUICK_OUT = Path(tempfile.gettempdir()) / "secagg-bench"
MEASURED = ("masking32", "packed")
DERIVED = {"ckks-default": 10**6}  # scheme -> the D it is measured at before scaling per ciphertext
MACHINE_BYTES = 24 * 2**30

_CHILD = """
import json, resource, sys
from benchmarks.crypto_costs import _data, measure_round
scheme, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
row = {"inputs_only": True} if scheme == "inputs" else measure_round(scheme, n, dim)
if scheme == "inputs":
    _data(n, dim)
row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("ROW " + json.dumps(row))
"""


def _child(scheme: str, n: int, dim: int) -> dict:
    """One round (or only the inputs, ``scheme="inputs"``) in a fresh interpreter: its row and peak RSS."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, scheme, str(n), str(dim)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        return {"scheme": scheme, "n": n, "dim": dim, "failed": proc.stderr.strip().splitlines()[-1:] or
                [f"exit {proc.returncode}"], "process_s": time.perf_counter() - t}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ROW "))
    return {"scheme": scheme, "n": n, "dim": dim, **json.loads(line[4:]), "process_s": time.perf_counter() - t}


def _summary(row: dict, inputs_rss: int) -> dict:
    held = row["peak_rss_bytes"] - inputs_rss
    n, dim = row["n"], row["dim"]
    out = {**row, "protocol_peak_bytes": held, "protocol_bytes_per_value_per_party": held / (dim * (n + 1)),
           "round_server_s": row["server_s"] + row["keyholder_s"]}
    # the largest D whose n-client round fits one machine, peak linear in D (inputs included)
    out["max_dim_in_24GB_at_this_n"] = int(MACHINE_BYTES / (row["peak_rss_bytes"] / dim))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--dim", type=int, default=None, help=f"values per client (default {SMOLLM2_PARAMETERS:,})")
    ap.add_argument("--quick", action="store_true", help="D = 1e6: seconds; written to the temporary directory")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    dim = args.dim or (10**6 if args.quick else SMOLLM2_PARAMETERS)
    n, t0 = args.clients, time.perf_counter()
    print(f"full-model secure aggregation: n={n}, D={dim:,} ({os.cpu_count()} CPUs; {NOTE})", flush=True)
    inputs = _child("inputs", n, dim)
    print(f"  inputs only: peak RSS {inputs['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    rows = []
    for scheme in MEASURED:
        r = _child(scheme, n, dim)
        if "failed" in r:
            print(f"  {scheme}: failed: {r['failed']}", flush=True)
            rows.append(r)
            continue
        r = {**_summary(r, inputs["peak_rss_bytes"]), "source": "measured"}
        rows.append(r)
        print(f"  {scheme:12} client {r['client_s']:7.2f} s  server {r['round_server_s']:7.2f} s  up/client "
              f"{r['up_bytes'] / 2**20:8.1f} MiB ({r['up_ratio_fp32']:.2f}x fp32)  round peak RSS "
              f"{r['peak_rss_bytes'] / 2**30:5.2f} GiB (protocol {r['protocol_peak_bytes'] / 2**30:5.2f})  err "
              f"{r['max_abs_error']:.1e}  [{r['process_s']:.0f} s]", flush=True)
    for scheme, small in DERIVED.items():
        small = min(small, dim)
        base = _child(scheme, n, small)
        small_inputs = _child("inputs", n, small)
        d = _derive({**base, "scheme": scheme}, dim)
        scale = dim / small
        d["peak_rss_bytes"] = small_inputs["peak_rss_bytes"] + (base["peak_rss_bytes"] - small_inputs["peak_rss_bytes"]) * scale
        d = {**_summary(d, inputs["peak_rss_bytes"]), "measured_at": {k: base[k] for k in (
            "client_s", "server_s", "keyholder_s", "up_bytes", "peak_rss_bytes", "max_abs_error")}}
        d["source"] = f"derived from D={small:.0e}: time and bytes per ciphertext, memory above the inputs per value"
        rows.append(d)
        print(f"  {scheme:12} client {d['client_s']:7.2f} s  server {d['round_server_s']:7.2f} s  up/client "
              f"{d['up_bytes'] / 2**20:8.1f} MiB ({d['up_ratio_fp32']:.2f}x fp32)  round peak RSS "
              f"{d['peak_rss_bytes'] / 2**30:5.2f} GiB  (derived)", flush=True)
    out = args.out or (QUICK_OUT if args.quick or dim != SMOLLM2_PARAMETERS else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "full_model.json"
    path.write_text(json.dumps({
        "command": "python -m benchmarks.full_model" + (" --quick" if args.quick else f" --clients {n} --dim {dim}"),
        "note": NOTE, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                  "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
        "n": n, "dim": dim, "inputs_peak_rss_bytes": inputs["peak_rss_bytes"], "rows": rows,
        "total_s": time.perf_counter() - t0}, indent=1) + "\n")
    _plot(rows, n, dim, out / "full_model.png")
    print(f"wrote {path} and full_model.png in {time.perf_counter() - t0:.0f} s")


def _plot(rows: list[dict], n: int, dim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "failed" not in r]
    names = [r["scheme"] + (" (derived)" if r["source"] != "measured" else "") for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, label, scale in ((axes[0], "client_s", "client time (s)", 1), (axes[1], "round_server_s",
                                  "server time (s)", 1), (axes[2], "peak_rss_bytes", "round peak RSS (GiB)", 2**30)):
        ax.bar(names, [r[key] / scale for r in ok], color=["C0" if r["source"] == "measured" else "C7" for r in ok])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    axes[2].axhline(MACHINE_BYTES / 2**30, color="r", ls="--", lw=1, label="24 GiB machine")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"one round, n = {n} clients, D = {dim:,} values each (all roles in one process)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
