"""One engine, three drivers: per-round time and bytes in-process, over our gRPC services, and over Flower.

The same work on every driver: the ``synthetic`` workload (each client's update is a seeded vector of ``--dim``
values: nothing to train, so the round is the protocol), the same scheme and options, cohorts of n ∈ ``--sizes``,
``--rounds`` rounds. Reported per driver, for the steady-state rounds 2..R (≥ 3 of them; median, min and max):

* ``seconds``: from the round's tasks going out to the new model applied (client encoding, every stage, the key
  holder's decryption, the server step), measured by the driver: ``Federation`` (in-process FIFO pump), the gRPC
  ``Coordinator`` (aggregator, key holder and n client agents with mTLS on loopback, threads of this process),
  Flower's simulation runtime (ServerApp thread, ClientApps in one Ray actor);
* ``protocol_bytes``: secagg payloads up and down per round, counted by the engine the same way on every driver
  (tasks, models and transport framing excluded; those differ by design); over Flower also
  ``flower_message_bytes``: every message's whole content (records, tasks and models included) in and out of
  every node, metered by :class:`training.flower.meter.MessageMeter`.

Flower's start (Ray, ~15 s here) and the first round (connections, caches) are left out.

``secaggplus``: our signed masking over Flower against Flower's own ``SecAggPlusWorkflow`` + ``secaggplus_mod``
(its legacy strategy API) on the same runtime, cohort (``--secaggplus``, default 10), D, graph degree and
threshold, in one run. Per steady-state round: the round's wall time; the whole client (every message of the
round, Flower's ``secaggplus_mod`` and quantization or our encoding included: wall time inside the ClientApp,
metered by :class:`training.flower.meter.MessageMeter` outermost on both apps; the one Ray actor handles one
message at a time) per client; the whole server (CPU time of the ServerApp thread over the round: strategy,
workflow or engine, (de)serialization; waits excluded); the Flower message bytes per client (content protobuf
size, the same meter on both); and the largest error of the weighted mean.
Writes ``benchmarks/results/flower.json`` and ``flower.png``. Usage:
``python -m benchmarks.flower [--dim 100000] [--sizes 3,10] [--schemes masking,ckks] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from training.engine.rules import FedAvg
from training.inprocess.federation import Federation
from training.flower.meter import MessageMeter, per_round
from training.inprocess.secure_sum import SecureSum
from training.deployment import TransportConfig
from training.services.loopback import Deployment
from training.services.workloads import SyntheticWorkload


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
    with tempfile.TemporaryDirectory() as tmp:
        meter = Path(tmp) / "meter.jsonl"
        rows = simulate(cfg, timeout=600, mods=(MessageMeter(meter),))["rows"]
        groups = per_round(meter)
    if [r.status for r in rows] != ["done"] * rounds:
        raise RuntimeError(f"a Flower round failed: {[r.reason for r in rows]}")
    return {"seconds": [r.seconds for r in rows], "wall_incl_start": time.perf_counter() - t0,
            "protocol_bytes": [r.bytes_up + sum(r.bytes_down_per_client.values()) for r in rows],
            "flower_message_bytes": [groups[str(r)]["down"] + groups[str(r)]["up"] for r in range(1, rounds + 1)]}


DRIVERS = {"in-process": in_process, "grpc": over_grpc, "flower": over_flower}


def _exact_mean(n: int, dim: int) -> np.ndarray:
    srcs = [SyntheticWorkload(dim, n, seed=1, clip=1.0).source(i) for i in range(n)]
    return sum(s.weight * s.update(np.zeros(dim), 0).delta for s in srcs) / sum(s.weight for s in srcs)


def flower_secaggplus(n: int, dim: int, rounds: int, k: int, t: int, meter: str) -> dict:
    """Flower's own SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``, its legacy strategy API) on the same
    simulation runtime: every client submits the same fixed update every round, from the global model 0 (so the
    FedAvg result after each round is the exact weighted mean); ``num_shares = k + 1`` (Flower counts the share a
    client keeps), threshold ``t``."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg as FlowerFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    times: list[float] = []
    cpu: list[float] = []
    result: dict = {}

    class Fixed(NumPyClient):
        def __init__(self, cid: int) -> None:
            src = SyntheticWorkload(dim, n, seed=1, clip=1.0).source(cid)
            self.x, self.w = src.update(np.zeros(dim), 0).delta.astype(np.float32), int(src.weight)

        def fit(self, parameters, config):
            return [self.x], self.w, {}

    class Timed(SecAggPlusWorkflow):
        def __call__(self, grid, context) -> None:
            t0, c0 = time.perf_counter(), time.thread_time()
            super().__call__(grid, context)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)

    client_app = ClientApp(client_fn=lambda context: Fixed(int(context.node_config["partition-id"])).to_client(),
                           mods=[MessageMeter(meter), secaggplus_mod])
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        strategy = FlowerFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                                initial_parameters=ndarrays_to_parameters([np.zeros(dim, np.float32)]),
                                fit_metrics_aggregation_fn=lambda _m: {})
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        seen = []
        inner = strategy.aggregate_fit

        def aggregate_fit(server_round, results, failures):
            params, metrics = inner(server_round, results, failures)
            seen.append(parameters_to_ndarrays(params)[0])
            return params, metrics

        strategy.aggregate_fit = aggregate_fit
        DefaultWorkflow(fit_workflow=Timed(num_shares=k + 1, reconstruction_threshold=t))(grid, legacy)
        result["mean"] = seen[-1]

    import os

    cpus = max(1, os.cpu_count() or 1)
    run_simulation(server_app, client_app, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "log_to_driver": False}})
    err = float(np.max(np.abs(result["mean"].astype(np.float64) - _exact_mean(n, dim))))
    return {"seconds": times, "server_cpu_seconds": cpu, "max_abs_error": err}


def ours_over_flower_same_graph(n: int, dim: int, rounds: int, k: int, t: int, meter: str) -> dict:
    """Our signed masking over Flower, same cohort, D, graph degree k and threshold t: round times of a
    ``rounds``-round run, and the error of the sum from a 1-round run (its model is the weighted mean itself)."""
    from training.flower.sim import simulate

    def cfg(r: int) -> TransportConfig:
        return TransportConfig(scheme="masking", trainer="synthetic", clients=n, rounds=r, dim=dim, seed=1, clip=1.0,
                               aggregator="fedavg", neighbors=k, threshold=t).validate()

    res = simulate(cfg(rounds), timeout=600, mods=(MessageMeter(meter),))
    one = simulate(cfg(1), timeout=600)["model"]
    return {"seconds": [r.seconds for r in res["rows"]], "server_cpu_seconds": res["server_cpu_seconds"],
            "max_abs_error": float(np.max(np.abs(one - _exact_mean(n, dim))))}


def _steady(res: dict, meter: str, n: int, rounds: int) -> dict:
    """Steady-state rounds 2..R of a run: round, whole-client (per client) and whole-server seconds, bytes."""
    groups = per_round(meter)
    steady = [groups[str(r)] for r in range(2, rounds + 1)]
    per_client = lambda g, k: sum(v[k] for p, v in g["by_partition"].items() if 0 <= p < n) / n  # noqa: E731
    return {"steady_seconds": _stats(res["seconds"][1:]),
            "client_seconds_per_client": _stats([per_client(g, "seconds") for g in steady]),
            "server_cpu_seconds": _stats(res["server_cpu_seconds"][1:]),
            "message_bytes_down_per_client": _stats([per_client(g, "down") for g in steady]),
            "message_bytes_up_per_client": _stats([per_client(g, "up") for g in steady]),
            "messages_per_round": _stats([g["messages"] for g in steady])}


def compare_secaggplus(n: int, dim: int, rounds: int) -> dict:
    from secagg.masking.config import MaskingConfig

    cfg = MaskingConfig(participants=tuple(range(n)), dim=1)
    k, t = int(cfg.neighbors), int(cfg.t)
    out = {"clients": n, "dim": dim, "neighbors": k, "threshold": t}
    names = ("ours (signed masking) over Flower", "Flower SecAggPlusWorkflow")
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in zip(names, (ours_over_flower_same_graph, flower_secaggplus)):
            meter = str(Path(tmp) / f"{len(out)}.jsonl")
            res = fn(n, dim, rounds, k, t, meter)
            out[name] = res | _steady(res, meter, n, rounds)
            o = out[name]
            print(f"{name:<36} n={n} k={k} t={t}: round {o['steady_seconds']['median']:.3f} s "
                  f"[{o['steady_seconds']['min']:.3f}, {o['steady_seconds']['max']:.3f}], client "
                  f"{o['client_seconds_per_client']['median']:.4f} s, server {o['server_cpu_seconds']['median']:.3f} s"
                  f" CPU, up {o['message_bytes_up_per_client']['median'] / 1e6:.3f} MB/client, error of the mean "
                  f"{res['max_abs_error']:.1e}", flush=True)
    ours, theirs = out[names[0]], out[names[1]]
    out["flower_secaggplus_over_ours"] = {
        k: theirs[k]["median"] / ours[k]["median"]
        for k in ("steady_seconds", "client_seconds_per_client", "server_cpu_seconds", "message_bytes_up_per_client",
                  "message_bytes_down_per_client")}
    return out


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
    ap.add_argument("--secaggplus", type=int, default=10, help="cohort of the SecAgg+ comparison (0: skip; "
                    "results for other cohorts already in --out are kept)")
    ap.add_argument("--skip-drivers", action="store_true", help="only the SecAgg+ comparison")
    ap.add_argument("--out", default="benchmarks/results/flower.json")
    args = ap.parse_args()
    if args.rounds < 4:
        raise SystemExit("--rounds must be at least 4 (3 steady-state rounds after the first)")
    rows = []
    for scheme in ([] if args.skip_drivers else args.schemes.split(",")):
        for n in [int(x) for x in args.sizes.split(",")]:
            for name, fn in DRIVERS.items():
                res = fn(scheme, n, args.dim, args.rounds)
                steady = res["seconds"][1:]
                row = {"scheme": scheme, "clients": n, "dim": args.dim, "driver": name, **res,
                       "steady_seconds": _stats(steady), "steady_protocol_bytes": _stats(res["protocol_bytes"][1:])}
                if "flower_message_bytes" in res:
                    row["steady_flower_message_bytes"] = _stats(res["flower_message_bytes"][1:])
                rows.append(row)
                print(f"{scheme:>7} n={n:<3} {name:<10} {row['steady_seconds']['median']:7.3f} s/round "
                      f"[{row['steady_seconds']['min']:.3f}, {row['steady_seconds']['max']:.3f}] "
                      f"{row['steady_protocol_bytes']['median'] / 1e6:8.2f} MB" +
                      (f" (Flower messages {row['steady_flower_message_bytes']['median'] / 1e6:.2f} MB)"
                       if "steady_flower_message_bytes" in row else ""), flush=True)
    for r in rows:
        base = next(x for x in rows if (x["scheme"], x["clients"], x["driver"]) == (r["scheme"], r["clients"],
                                                                                     "in-process"))
        r["time_vs_in_process"] = r["steady_seconds"]["median"] / base["steady_seconds"]["median"]
        r["bytes_vs_in_process"] = r["steady_protocol_bytes"]["median"] / base["steady_protocol_bytes"]["median"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc |= {"machine": platform.platform()} | ({"rows": rows} if rows else {})
    if args.secaggplus:  # by cohort size; an earlier run's other cohorts are kept
        done = doc.get("secaggplus", {})
        done = {str(done["clients"]): done} if "clients" in done else done
        doc["secaggplus"] = done | {str(args.secaggplus): compare_secaggplus(args.secaggplus, args.dim, args.rounds)}
    out.write_text(json.dumps(doc, indent=2))
    if rows:
        plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
