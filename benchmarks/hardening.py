"""What the malicious-server hardening costs: each protocol against its previous version, measured in one run.

    python -m benchmarks.hardening [--suite hardening|tags|kernels] [--baseline C] [--dim 1000000] [--repeats 3] [--quick]

The previous protocol is the secagg of ``--baseline`` (the commit before issue 10), checked out with
``git worktree`` into a temporary folder; the current one is this tree. Every round runs in a fresh process
(:mod:`benchmarks._round_worker`), alternating baseline and current, ``--repeats`` times, on the same data:

* masking at n = 10 and 100 (default degree and threshold of each version, D values, signed in both: the
  previous signed variant is the like-for-like baseline), and n = 100 with 10% dropout (the server-heavy case);
* CKKS default parameters at n = 10: the current verified round against the previous round with client
  pre-weighting (the same work: both encrypt [w*x, w]) and against the previous default for public weights
  (the aggregator multiplied ciphertexts by the weights);
* packed BFV at n = 10.

``--suite tags`` (issue 25): CKKS and packed at n = 10, this tree (exact-sum tags) against ``eaea019``, the commit
before them; written to ``hardening_tags.json``/``.png``. ``--suite kernels`` (issue 28): masking at n = 10 and 100,
CKKS and packed at n = 10, this tree (the fused encoding kernel, zlib-ng's CRC-32) against ``a5d03b4``, the commit
before them, the same protocol on both sides; written to ``hardening_kernels.json``/``.png``.

Reported per case: client CPU seconds (median over clients), bytes up and down per client, server and key-holder
CPU seconds; each as the median over repeats with min and max, and the ratio current / baseline of the medians.
Writes benchmarks/results/hardening.json and .png (``--quick``: D = 100,000, one repeat, output to /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORKER = Path(__file__).resolve().parent / "_round_worker.py"
METRICS = ("client_cpu_s_median", "client_up_bytes_mean", "client_down_bytes_mean", "server_cpu_s", "keyholder_cpu_s")


def cases(dim: int) -> list[dict]:
    """(label, scheme, n, dropout, options for the baseline, options for the current tree)."""
    return [
        {"label": "masking n=10", "scheme": "masking", "n": 10, "drop": 0.0, "base": {"sign": True}, "new": {}},
        {"label": "masking n=100", "scheme": "masking", "n": 100, "drop": 0.0, "base": {"sign": True}, "new": {}},
        {"label": "masking n=100, 10% dropout", "scheme": "masking", "n": 100, "drop": 0.1, "base": {"sign": True},
         "new": {}},
        {"label": "CKKS n=10 (vs pre-weighted)", "scheme": "ckks", "n": 10, "drop": 0.0,
         "base": {"weighting": "client"}, "new": {}},
        {"label": "CKKS n=10 (vs aggregator weights)", "scheme": "ckks", "n": 10, "drop": 0.0,
         "base": {"weighting": "aggregator"}, "new": {}},
        {"label": "packed n=10", "scheme": "packed", "n": 10, "drop": 0.0, "base": {}, "new": {}},
    ]


def kernel_cases() -> list[dict]:
    """Issue 28: the same rounds before and after the fused encoding kernel and the SIMD CRC (``--suite kernels``)."""
    return [{"label": f"{scheme} n={n} (kernels)", "scheme": scheme, "n": n, "drop": 0.0, "base": {}, "new": {}}
            for scheme, n in (("masking", 10), ("masking", 100), ("ckks", 10), ("packed", 10))]


def tag_cases() -> list[dict]:
    """Issue 25: the HE rounds with exact-sum tags against the same rounds just before them (``--suite tags``)."""
    return [{"label": "CKKS n=10 (tags vs untagged)", "scheme": "ckks", "n": 10, "drop": 0.0, "base": {}, "new": {}},
            {"label": "packed n=10 (tags vs untagged)", "scheme": "packed", "n": 10, "drop": 0.0, "base": {},
             "new": {}}]


def baseline_tree(commit: str) -> Path:
    """A checkout of ``commit`` (made once per commit with git worktree; reused afterwards)."""
    path = Path(tempfile.gettempdir()) / f"secagg-baseline-{commit}"
    if not (path / "secagg").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(path), commit],
                       check=True, capture_output=True)
    return path


def one(root: Path, case: dict, options: dict, dim: int, seed: int) -> dict:
    cmd = [sys.executable, str(WORKER), "--root", str(root), "--scheme", case["scheme"], "--n", str(case["n"]),
           "--dim", str(dim), "--drop", str(case["drop"]), "--options", json.dumps(options), "--seed", str(seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    return {m: {"median": statistics.median(r[m] for r in runs), "min": min(r[m] for r in runs),
                "max": max(r[m] for r in runs)} for m in METRICS} | {
        "max_abs_error": max(r["max_abs_error"] for r in runs), "runs": runs}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["label"] for r in rows]
    shown = ("client_cpu_s_median", "client_up_bytes_mean", "server_cpu_s", "keyholder_cpu_s")
    fig, ax = plt.subplots(figsize=(12, 4.5))
    xs = np.arange(len(rows))
    for j, m in enumerate(shown):
        vals = [r["ratio"].get(m) or np.nan for r in rows]
        ax.bar(xs + (j - 1.5) * 0.2, vals, 0.2, label=m.replace("_", " "))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.1, color="r", ls="--", lw=0.8, label="+10% (target)")
    ax.set_xticks(xs, labels, rotation=12, fontsize=8)
    ax.set_ylabel("current / previous protocol (median)")
    ax.set_title("cost of the malicious-server hardening, measured in one run (shared 2-core machine)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["hardening", "tags", "kernels"], default="hardening",
                    help="hardening: against issue 10's baseline; tags: the HE tags against the commit before them; "
                         "kernels: the fused encoding and SIMD CRC against the commit before them")
    ap.add_argument("--baseline", default=None,
                    help="commit of the previous protocol (218b637; tags: eaea019; kernels: a5d03b4)")
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="run the cases whose label contains this text")
    args = ap.parse_args()
    dim = args.dim or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    args.baseline = args.baseline or {"tags": "eaea019", "kernels": "a5d03b4"}.get(args.suite, "218b637")
    name = "hardening" if args.suite == "hardening" else f"hardening_{args.suite}"
    base = baseline_tree(args.baseline)
    rows = []
    for case in {"hardening": cases, "tags": lambda _: tag_cases(), "kernels": lambda _: kernel_cases()}[args.suite](dim):
        if args.only and args.only not in case["label"]:
            continue
        got = {"base": [], "new": []}
        for r in range(repeats):  # alternate, so load drifts hit both sides alike
            got["base"].append(one(base, case, case["base"], dim, seed=r))
            got["new"].append(one(ROOT, case, case["new"], dim, seed=r))
        b, c = summarise(got["base"]), summarise(got["new"])
        ratio = {m: (c[m]["median"] / b[m]["median"] if b[m]["median"] else None) for m in METRICS}
        rows.append({"label": case["label"], "scheme": case["scheme"], "n": case["n"], "dim": dim,
                     "dropout": case["drop"], "baseline_options": case["base"], "baseline": b, "current": c,
                     "ratio": ratio})
        print(f"{case['label']:36} client {b['client_cpu_s_median']['median'] * 1e3:8.1f} -> "
              f"{c['client_cpu_s_median']['median'] * 1e3:8.1f} ms ({ratio['client_cpu_s_median']:.3f}x)  up "
              f"{b['client_up_bytes_mean']['median'] / 1e3:9.1f} -> {c['client_up_bytes_mean']['median'] / 1e3:9.1f} KB "
              f"({ratio['client_up_bytes_mean']:.3f}x)  server {b['server_cpu_s']['median']:.3f} -> "
              f"{c['server_cpu_s']['median']:.3f} s  key holder {b['keyholder_cpu_s']['median']:.3f} -> "
              f"{c['keyholder_cpu_s']['median']:.3f} s", flush=True)
    out_dir = Path(tempfile.gettempdir()) / "secagg-bench" if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "note": "shared machine"},
              "baseline_commit": args.baseline, "dim": dim, "repeats": repeats, "rows": rows}
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(rows, out_dir / f"{name}.png")
    print(f"wrote {out_dir / name}.json and .png")


if __name__ == "__main__":
    main()
