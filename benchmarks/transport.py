"""Transport cost: one secure-aggregation round over loopback gRPC (mTLS, 1 MiB chunks) vs in-process.

For n ∈ {3, 10, 100} clients (masking; CKKS for n ≤ 10 by default) and a small model (``--dim``), measures

* in-process: ``secagg.run_round`` on roles from ``build_round`` (every message passed as bytes), seconds and
  protocol bytes (sum of all message payloads);
* gRPC: a :class:`training.transport.inproc.Deployment` (aggregator, key holder and n client agents, each with its
  own mTLS channel, on threads of this process): seconds per round (round opened → aggregate applied), protocol
  bytes (the same payloads, counted by the aggregator: must equal the in-process count), transport bytes
  (protocol + task envelopes carrying the round parameters and global model, which in-process has no
  counterpart for), the loopback interface's byte counter (everything incl. TLS, HTTP/2 framing, connection
  setup and, for CKKS, each party's one-time public-context download; other traffic on ``lo`` at the same time
  adds noise), and the process's peak RSS.

Prints the gRPC/in-process ratios and writes ``benchmarks/results/transport.json``.
Usage: ``python -m benchmarks.transport [--dim 1000] [--sizes 3,10,100] [--ckks-max 10] [--schemes masking,ckks]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

from secagg import run_round
from secagg.roles import Outbound
from training.transport.inproc import Deployment, FixedSource


def _lo_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])  # received bytes; on loopback every sent byte is also received once
    return 0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Counting:
    """Counts payload bytes of everything a role emits."""

    def __init__(self, inner, box: list[int]) -> None:
        self._inner, self._box = inner, box
        self.client_id = getattr(inner, "client_id", None)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _count(self, outs: list[Outbound]) -> list[Outbound]:
        self._box[0] += sum(len(o.payload) for o in outs)
        return outs

    def start(self, update, weight):
        return self._count(self._inner.start(update, weight))

    def receive(self, *args):
        return self._count(self._inner.receive(*args))

    def close_stage(self):
        return self._count(self._inner.close_stage())


def in_process(scheme: str, updates, weights, options: dict) -> dict:
    if scheme == "ckks":
        from secagg.ckks.setup import build_round
    else:
        from secagg.masking.setup import build_round
    n = len(updates)
    t0 = time.perf_counter()
    rnd = build_round(list(range(n)), dim=updates[0].size, weights=dict(enumerate(weights)),
                      graph_seed=bytes(16), **options)
    box = [0]
    clients = {i: _Counting(c, box) for i, c in rnd.clients.items()}
    fin = None if rnd.finalizer is None else _Counting(rnd.finalizer, box)
    res = run_round(clients, _Counting(rnd.aggregator, box), dict(enumerate(updates)), dict(enumerate(weights)),
                    finalizer=fin)
    return {"seconds": time.perf_counter() - t0, "protocol_bytes": box[0], "mean": res.mean}


def over_grpc(scheme: str, updates, weights, options: dict) -> dict:
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    t0 = time.perf_counter()
    lo0 = _lo_bytes()
    with Deployment(scheme, sources, updates[0].size, options=options, stage_timeout=60.0,
                    checkin_timeout=30.0, poll_seconds=5.0) as dep:
        records = dep.run(timeout=900)
    wall = time.perf_counter() - t0
    rec = records[-1]
    if rec.status != "done":
        raise RuntimeError(f"round failed: {rec.reason}")
    protocol = rec.bytes_up + rec.bytes_down + rec.keyholder_bytes
    return {"seconds": rec.seconds, "wall_seconds_incl_setup": wall, "protocol_bytes": protocol,
            "task_bytes": rec.task_bytes, "transport_bytes": protocol + rec.task_bytes,
            "loopback_bytes": _lo_bytes() - lo0, "peak_rss_mb": _rss_mb(), "mean": rec.result.mean}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--sizes", default="3,10,100")
    ap.add_argument("--ckks-max", type=int, default=10, help="largest n for the CKKS rows")
    ap.add_argument("--schemes", default="masking,ckks")
    ap.add_argument("--out", default="benchmarks/results/transport.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for scheme in args.schemes.split(","):
            if scheme == "ckks" and n > args.ckks_max:
                continue
            updates = [rng.uniform(-1, 1, args.dim) for _ in range(n)]
            weights = [float(w) for w in rng.integers(1, 4, n)]
            opts = {"min_contributors": 2} if scheme == "ckks" else {}
            local = in_process(scheme, updates, weights, opts)
            remote = over_grpc(scheme, updates, weights, opts)
            err = float(np.max(np.abs(remote.pop("mean") - local.pop("mean"))))
            row = {"scheme": scheme, "n": n, "dim": args.dim, "in_process": local, "grpc": remote,
                   "time_ratio": remote["seconds"] / local["seconds"],
                   "bytes_ratio": remote["transport_bytes"] / local["protocol_bytes"],
                   "max_abs_diff_vs_in_process": err}
            rows.append(row)
            print(f"{scheme:8} n={n:>3} dim={args.dim}: in-process {local['seconds']:.3f} s "
                  f"{local['protocol_bytes']:>12,} B | gRPC {remote['seconds']:.3f} s/round "
                  f"(wall {remote['wall_seconds_incl_setup']:.2f} s) {remote['transport_bytes']:>12,} B "
                  f"(lo {remote['loopback_bytes']:,} B) peak RSS {remote['peak_rss_mb']:.0f} MB | "
                  f"ratio time x{row['time_ratio']:.2f} bytes x{row['bytes_ratio']:.2f} | diff {err:.1e}",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
