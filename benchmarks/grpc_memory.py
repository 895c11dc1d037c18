"""Peak memory of every process of a real gRPC deployment (``secagg up``) at full-model size, streamed.

    python -m benchmarks.grpc_memory [--schemes masking ckks packed] [--clients 3] [--dim D] [--out DIR]

One round of the synthetic trainer (a seeded D-value update per client, no torch) with the key holder, the
aggregator and n clients each in its own OS process over mTLS on loopback: the launcher of ``secagg up``. While it
runs, the benchmark reads every child's ``VmHWM`` (peak resident set) from ``/proc``, so each role's peak is its
own; a client's includes the global model it receives and the update it trains, which the protocol cannot avoid.
What issue 28 asks of the servers: the aggregator's and the key holder's peaks must not grow with n x D.
Rows are written as they finish (resumable, like full_model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.crypto_costs import NOTE, RESULTS
from benchmarks.full_model import SMOLLM2_PARAMETERS

SCHEMES = ("masking", "packed", "ckks")


def _peaks(marker: str) -> dict[int, tuple[str, int]]:
    """pid -> (role, VmHWM bytes) of the live processes whose command line names ``marker``."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if marker.encode() not in b" ".join(cmd) or b"training.services.cli" not in cmd:
            continue
        args = [c.decode(errors="replace") for c in cmd]
        role = args[args.index("training.services.cli") + 1]
        hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
        if hwm:
            out[int(pid)] = (role, int(hwm.group(1)) * 1024)
    return out


def measure(scheme: str, n: int, dim: int, work: Path) -> dict:
    """One round of ``secagg up`` (synthetic trainer): wall time and each role's peak RSS."""
    from training.deployment import TransportConfig
    from training.services.launcher import launch

    out = work / f"{scheme}-{n}"
    cfg = TransportConfig(scheme=scheme, clients=n, rounds=1, trainer="synthetic", dim=dim, out=str(out),
                          certs=str(out / "certs"), aggregator="fedavg", max_message_bytes=4 << 30,
                          stage_timeout=1800.0, train_timeout=1800.0, checkin_timeout=5.0, poll_seconds=300.0,
                          min_clients=n).validate()
    seen: dict[int, tuple[str, int]] = {}
    result: dict = {}

    def run() -> None:
        try:
            result["rows"] = launch(cfg, timeout=3 * 3600, echo=lambda _line: None)
        except BaseException as exc:  # reported in the row
            result["error"] = f"{type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    while th.is_alive():
        for pid, (role, hwm) in _peaks(str(out)).items():
            seen[pid] = (role, max(hwm, seen.get(pid, (role, 0))[1]))
        th.join(0.5)
    wall = time.perf_counter() - t0
    by_role: dict[str, list[int]] = {}
    for role, hwm in seen.values():
        by_role.setdefault(role, []).append(hwm)
    rows = result.get("rows") or []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"scheme": scheme, "n": n, "dim": dim, "commit": commit, "wall_s": wall, "error": result.get("error"),
            "rounds_done": len(rows), "aggregator_peak_rss_bytes": max(by_role.get("aggregator", [0])),
            "keyholder_peak_rss_bytes": max(by_role.get("keyholder", [0])),
            "client_peak_rss_bytes": max(by_role.get("client", [0])), "processes": len(seen)}


def kept_rows(path: Path, dim: int) -> list[dict]:
    """The rows of ``path`` already measured at ``dim`` without error (a run resumes after them)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    return [r for r in old.get("rows", []) if r.get("dim") == dim and not r.get("error")]


def write_rows(path: Path, module: str, dim: int, rows: list[dict]) -> None:
    path.write_text(json.dumps({"command": f"python -m {module}", "note": NOTE, "dim": dim, "rows": rows},
                               indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--clients", type=int, nargs="+", default=[3])
    ap.add_argument("--dim", type=int, default=SMOLLM2_PARAMETERS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or (RESULTS if args.dim == SMOLLM2_PARAMETERS else Path(tempfile.gettempdir()) / "secagg-bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grpc_memory.json"
    rows = kept_rows(path, args.dim)
    with tempfile.TemporaryDirectory(prefix="secagg-grpc-mem-") as tmp:
        for n in args.clients:
            for scheme in args.schemes:
                if any(r["scheme"] == scheme and r["n"] == n for r in rows):
                    continue
                r = measure(scheme, n, args.dim, Path(tmp))
                gib = {k: r[f"{k}_peak_rss_bytes"] / 2**30 for k in ("aggregator", "keyholder", "client")}
                print(f"  {scheme:8} n={n:<3} aggregator {gib['aggregator']:5.2f} GiB  key holder "
                      f"{gib['keyholder']:5.2f} GiB  client {gib['client']:5.2f} GiB  [{r['wall_s']:.0f} s]"
                      f"{'  ' + r['error'] if r['error'] else ''}", flush=True)
                if not r["error"]:
                    rows.append(r)
                write_rows(path, "benchmarks.grpc_memory", args.dim, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
