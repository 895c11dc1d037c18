"""One engine, three drivers: per-round time and bytes in-process, over our gRPC services, and over Flower.

The same work on every driver: the ``synthetic`` workload (each client's update is a seeded vector of ``--dim``
values: nothing to train, so the round is the protocol), the same scheme and options, cohorts of n ∈ ``--sizes``,
``--rounds`` rounds. Reported per driver, for the steady-state rounds 2..R (≥ 3 of them; median, min and max):

* ``seconds``: from the round's tasks going out to the new model applied (client encoding, every stage, the key
  holder's decryption, the server step), measured by the driver: ``Federation`` (in-process FIFO pump), the gRPC
  ``Coordinator`` (aggregator, key holder and n client agents with mTLS on loopback, threads of this process),
  Flower's simulation runtime (ServerApp thread, ClientApps in one Ray actor);
* ``protocol_bytes``: secagg payloads up and down per round, counted by the engine the same way on every driver
  (tasks, models and transport framing excluded; those differ by design).

Flower's start (Ray, ~15 s here) and the first round (connections, caches) are left out. Not here yet: our masking
over Flower against Flower's own ``SecAggPlusWorkflow`` on the same cohort (needs its legacy strategy API).
Writes ``benchmarks/results/flower.json`` and ``flower.png``. Usage:
``python -m benchmarks.flower [--dim 100000] [--sizes 3,10] [--schemes masking,ckks] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from training.aggregation import FedAvg
from training.federation import Federation
from training.secure import SecureSum
from training.transport.config import TransportConfig
from training.transport.inproc import Deployment
from training.workload import SyntheticWorkload


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


def in_process(scheme: str, n: int, dim: int, rounds: int) -> dict:
    work = SyntheticWorkload(dim, n, seed=1, clip=1.0)
    sources = {i: work.source(i) for i in range(n)}
    fed = Federation(np.zeros(dim), FedAvg(), SecureSum(scheme, clip=1.0, **({"max_cohort": n} if scheme == "packed"
                                                                                else {})),
                     list(range(n)), update_clip=1e9)
    secs, nbytes = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        model = fed.global_vec.astype(np.float32).astype(np.float64)  # what networked clients train from
        rep = fed.aggregate({c: s.update(model, fed.version) for c, s in sources.items()})
        secs.append(time.perf_counter() - t0)
        nbytes.append(rep.record.bytes_up + rep.record.bytes_down)
    return {"seconds": secs, "protocol_bytes": nbytes}


def over_grpc(scheme: str, n: int, dim: int, rounds: int) -> dict:
    work = SyntheticWorkload(dim, n, seed=1, clip=1.0)
    with Deployment(scheme, {i: work.source(i) for i in range(n)}, dim, rounds=rounds, step=work.step(),
                    stage_timeout=60.0, checkin_timeout=30.0, poll_seconds=5.0) as dep:
        records = dep.run(timeout=900)
    if [r.status for r in records] != ["done"] * rounds:
        raise RuntimeError(f"a gRPC round failed: {[r.reason for r in records]}")
    return {"seconds": [r.seconds for r in records], "protocol_bytes": [r.bytes_up + r.bytes_down for r in records]}


def over_flower(scheme: str, n: int, dim: int, rounds: int) -> dict:
    from training.flower.sim import simulate

    cfg = TransportConfig(scheme=scheme, trainer="synthetic", clients=n, rounds=rounds, dim=dim, seed=1, clip=1.0,
                          aggregator="fedavg").validate()
    t0 = time.perf_counter()
    rows = simulate(cfg, timeout=600)["rows"]
    if [r.status for r in rows] != ["done"] * rounds:
        raise RuntimeError(f"a Flower round failed: {[r.reason for r in rows]}")
    return {"seconds": [r.seconds for r in rows], "wall_incl_start": time.perf_counter() - t0,
            "protocol_bytes": [r.bytes_up + sum(r.bytes_down_per_client.values()) for r in rows]}


DRIVERS = {"in-process": in_process, "grpc": over_grpc, "flower": over_flower}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({(r["scheme"], r["clients"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(DRIVERS)
    for k, name in enumerate(DRIVERS):
        med, lo, hi = [], [], []
        for scheme, n in labels:
            r = next(x for x in rows if (x["scheme"], x["clients"], x["driver"]) == (scheme, n, name))
            s = r["steady_seconds"]
            med.append(s["median"]), lo.append(s["median"] - s["min"]), hi.append(s["max"] - s["median"])
        ax.bar(np.arange(len(labels)) + k * width, med, width, yerr=[lo, hi], label=name, capsize=3)
    ax.set_xticks(np.arange(len(labels)) + width, [f"{s}\nn={n}" for s, n in labels])
    ax.set_ylabel("seconds per round (steady state)")
    ax.set_title(f"one engine, three drivers (D = {rows[0]['dim']:,})")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--sizes", default="3,10")
    ap.add_argument("--schemes", default="masking,ckks")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/flower.json")
    args = ap.parse_args()
    if args.rounds < 4:
        raise SystemExit("--rounds must be at least 4 (3 steady-state rounds after the first)")
    rows = []
    for scheme in args.schemes.split(","):
        for n in [int(x) for x in args.sizes.split(",")]:
            for name, fn in DRIVERS.items():
                res = fn(scheme, n, args.dim, args.rounds)
                steady = res["seconds"][1:]
                row = {"scheme": scheme, "clients": n, "dim": args.dim, "driver": name, **res,
                       "steady_seconds": _stats(steady), "steady_protocol_bytes": _stats(res["protocol_bytes"][1:])}
                rows.append(row)
                print(f"{scheme:>7} n={n:<3} {name:<10} {row['steady_seconds']['median']:7.3f} s/round "
                      f"[{row['steady_seconds']['min']:.3f}, {row['steady_seconds']['max']:.3f}] "
                      f"{row['steady_protocol_bytes']['median'] / 1e6:8.2f} MB", flush=True)
    for r in rows:
        base = next(x for x in rows if (x["scheme"], x["clients"], x["driver"]) == (r["scheme"], r["clients"],
                                                                                     "in-process"))
        r["time_vs_in_process"] = r["steady_seconds"]["median"] / base["steady_seconds"]["median"]
        r["bytes_vs_in_process"] = r["steady_protocol_bytes"]["median"] / base["steady_protocol_bytes"]["median"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
