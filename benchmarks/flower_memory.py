"""Peak memory of a Flower round at full-model size, streamed, on Flower's simulation runtime.

    python -m benchmarks.flower_memory [--schemes masking packed] [--clients 3 10] [--dim D] [--repeats 1]

One round of the synthetic trainer (a seeded D-value update per client, no torch) through ``secagg flower sim``:
the ServerApp (the untrusted aggregator), Flower's SuperLink and the simulation in one driver process, every
virtual SuperNode's ClientApp (the clients and, for packed, the key holder) in one Ray actor. Each point runs in
a fresh subprocess; the parent reads ``VmHWM`` (peak resident set) of it and of every process under it from
``/proc``, so each row has the driver's peak, the ClientApp actor's and Ray's own processes'. What issue 28 asks:
no process's peak grows with n x D (each ≤ 4 GiB at D = 134.5M, for n = 3 and n = 10). A client's share holds
the global model it is sent and the update it makes (8 B/value each, float64), which the protocol cannot avoid;
the simulation runs the clients one after another in the one actor, so the actor holds one client's at a time.
CKKS is left out by default: its client encrypts for about 300 s per 134.5M-value update on 2 cores (see
``full_model.json`` for its streamed peak in one process). Rows are written as they finish (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.crypto_costs import RESULTS
from benchmarks.full_model import SMOLLM2_PARAMETERS
from benchmarks.grpc_memory import kept_rows, write_rows

SCHEMES = ("masking", "packed", "ckks")
GIB = 2**30


def _tree(root: int) -> dict[int, str]:
    """pid -> command line of ``root`` and every live process under it."""
    parents: dict[int, int] = {}
    cmds: dict[int, str] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmds[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = {}, [root]
    while todo:
        p = todo.pop()
        if p in cmds:
            out[p] = cmds[p]
        todo += [c for c, q in parents.items() if q == p and c not in out]
    return out


def _hwm(pid: int) -> int:
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(m.group(1)) * 1024 if m else 0


def _kind(pid: int, root: int, cmd: str) -> str:
    if pid == root:
        return "driver"
    return "clientapp" if "ClientAppActor" in cmd else "ray"


def point(scheme: str, n: int, dim: int) -> dict:
    """In this process: one round of ``secagg flower sim``; wall time, status, bytes and parts."""
    from training.deployment import TransportConfig
    from training.flower.sim import simulate

    with tempfile.TemporaryDirectory(prefix="secagg-flower-mem-") as tmp:
        cfg = TransportConfig(scheme=scheme, clients=n, rounds=1, trainer="synthetic", dim=dim, out=tmp,
                              aggregator="fedavg", min_clients=n).validate()
        t0 = time.perf_counter()
        res = simulate(cfg, timeout=3 * 3600, settings={"spool": str(Path(tmp) / "spool")})
        wall = time.perf_counter() - t0
        left = list((Path(tmp) / "spool").glob("*")) if (Path(tmp) / "spool").exists() else []
    row = res["rows"][0]
    return {"status": [r.status for r in res["rows"]], "wall_s": wall, "round_s": row.seconds,
            "server_cpu_s": sum(res.get("server_cpu_seconds") or []), "parts": res.get("parts", 0),
            "up_bytes_per_value": row.bytes_up / n / dim, "spool_files_left": len(left)}


def measure(scheme: str, n: int, dim: int) -> dict:
    """One point in a fresh subprocess, with the peak RSS of every process under it."""
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1"}  # docs/deploy-flower.md: one BLAS thread beside Ray
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.flower_memory", "--point", scheme, str(n), str(dim)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    seen: dict[int, tuple[str, int]] = {}
    while proc.poll() is None:
        for pid, cmd in _tree(proc.pid).items():
            kind = seen.get(pid, (_kind(pid, proc.pid, cmd), 0))[0]
            if kind == "ray" and "ClientAppActor" in cmd:
                kind = "clientapp"  # a Ray worker becomes the actor after it started
            seen[pid] = (kind, max(seen.get(pid, (kind, 0))[1], _hwm(pid)))
        time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines and proc.returncode == 0 else {"error": f"exit {proc.returncode}"}
    peaks = {k: max([h for kind, h in seen.values() if kind == k], default=0) for k in ("driver", "clientapp", "ray")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"scheme": scheme, "n": n, "dim": dim, "commit": commit, **result,
            **{f"{k}_peak_rss_bytes": v for k, v in peaks.items()},
            "largest_process_bytes": max(peaks.values()), "processes": len(seen),
            "goal_met": "error" not in result and max(peaks.values()) <= 4 * GIB}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", nargs="+", default=["masking", "packed"], choices=SCHEMES)
    ap.add_argument("--clients", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--dim", type=int, default=SMOLLM2_PARAMETERS)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--point", nargs=3, metavar=("SCHEME", "N", "DIM"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(point(args.point[0], int(args.point[1]), int(args.point[2]))), flush=True)
        return
    out = args.out or (RESULTS if args.dim == SMOLLM2_PARAMETERS else Path(tempfile.gettempdir()) / "secagg-bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "flower_memory.json"
    rows = kept_rows(path, args.dim)
    for n in args.clients:
        for scheme in args.schemes:
            have = sum(r["scheme"] == scheme and r["n"] == n for r in rows)
            for _ in range(have, args.repeats):
                r = measure(scheme, n, args.dim)
                print(f"  {scheme:8} n={n:<3} driver {r['driver_peak_rss_bytes'] / GIB:5.2f} GiB  ClientApp actor "
                      f"{r['clientapp_peak_rss_bytes'] / GIB:5.2f} GiB  Ray {r['ray_peak_rss_bytes'] / GIB:5.2f} GiB"
                      f"  [{r.get('wall_s', 0):.0f} s]{'  ' + r['error'] if 'error' in r else ''}", flush=True)
                if "error" not in r:
                    rows.append(r)
                write_rows(path, "benchmarks.flower_memory", args.dim, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
