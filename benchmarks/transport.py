"""Transport cost: one secure-aggregation round over loopback gRPC (mTLS, 1 MiB chunks) vs in-process.

For n ∈ {3, 10, 100} clients (masking; CKKS for n ≤ 10 by default) and a small model (``--dim``), measures

* in-process: ``secagg.run_round`` on roles from ``build_round`` (every message passed as bytes; masking with
  Ed25519-signed advertisements and survivor lists, as over gRPC), seconds and protocol bytes (all payloads);
* gRPC: a :class:`training.services.loopback.Deployment` (aggregator, key holder and n client agents, each with its
  own mTLS channel, on threads of this process) running two rounds of the same updates; the second (steady state:
  connections open, peers' signing certificates cached) is reported: seconds (round opened → aggregate applied),
  protocol bytes (the same payloads, counted by the aggregator: must equal the in-process count), transport bytes
  (protocol + task envelopes with the round parameters, the cohort's certificate fingerprints (signed masking) and
  the global model as float32, which in-process has no counterpart for, + certificates fetched), the loopback
  interface's byte counter over that round (everything incl. TLS and HTTP/2 framing; other traffic on ``lo`` at the
  same time adds noise), and the process's peak RSS. ``per_client_bytes`` (and ``..._first_round``: cold caches,
  every peer certificate fetched) break a round's bytes down per client by message type and part of the task.

Prints the gRPC/in-process ratios and writes ``benchmarks/results/transport.json`` and ``transport.png``.
Usage: ``python -m benchmarks.transport [--dim 10000] [--sizes 3,10,100] [--ckks-max 10] [--schemes masking,ckks,packed]``.

Load mode (``--load 100``): one masking round with 100 concurrent clients whose updates have the size of the demo's
tiny GPT-2 (235,264 parameters; the clients do not train: this measures transport and protocol). ``threads``: the
100 agents (each its own mTLS channel) share this process with the aggregator; peak RSS of the process.
``processes``: ``secagg up`` with 101 OS processes; peaks of the summed RSS and PSS of all of them (sampled every
0.25 s; PSS shares library pages out, so it is the memory really occupied).
Writes ``benchmarks/results/transport_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from secagg import run_round
from secagg.errors import SecAggError
from secagg.messages import decode
from secagg.roles import Outbound
from training.services.loopback import Deployment, FixedSource
from training.services.wire import model_bytes, pack, unpack


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
    """One round with every role an object of this process; setup (HE key generation) is timed apart."""
    if scheme == "ckks":
        from secagg.ckks.setup import build_round
    elif scheme == "packed":
        from secagg.packed.setup import build_round
    else:
        from secagg.masking.setup import build_round
    n = len(updates)
    t_setup = time.perf_counter()
    rnd = build_round(list(range(n)), dim=updates[0].size, weights=dict(enumerate(weights)),
                      graph_seed=bytes(16), **options)
    t0 = time.perf_counter()
    box = [0]
    clients = {i: _Counting(c, box) for i, c in rnd.clients.items()}
    fin = None if rnd.finalizer is None else _Counting(rnd.finalizer, box)
    res = run_round(clients, _Counting(rnd.aggregator, box), dict(enumerate(updates)), dict(enumerate(weights)),
                    finalizer=fin)
    return {"seconds": time.perf_counter() - t0, "setup_seconds": t0 - t_setup, "protocol_bytes": box[0],
            "mean": res.mean}


class _Tally:
    """Counts the round role's inbound and outbound payload bytes by message type (``up:``/``down:`` + class)."""

    def __init__(self, inner, tally: dict[str, int]) -> None:
        self._inner, self._tally = inner, tally

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _add(self, kind: str, payload: bytes) -> None:
        try:
            name = type(decode(payload)).__name__
        except SecAggError:
            name = "opaque"
        self._tally[f"{kind}:{name}"] = self._tally.get(f"{kind}:{name}", 0) + len(payload)

    def _down(self, outs: list[Outbound]) -> list[Outbound]:
        for o in outs:
            self._add("down" if o.to >= 0 else "keyholder", o.payload)
        return outs

    def receive(self, sender, payload):
        self._add("up" if sender >= 0 else "keyholder", payload)
        return self._down(self._inner.receive(sender, payload))

    def close_stage(self):
        return self._down(self._inner.close_stage())


def _task_parts(task: bytes, members: int) -> dict[str, int]:
    """A task envelope's bytes (times the ``members`` it is sent to) by part: model body, identities, the rest."""
    header, body = unpack(task)
    ids = header.get("params", {}).get("identities")
    ident = 0 if ids is None else len(json.dumps({"identities": ids}, separators=(",", ":")))
    return {"model": members * len(body), "identities": members * ident,
            "header": members * (len(task) - len(body) - ident)}


def _snapshot(dep: Deployment) -> dict[str, int]:
    return {"lo": _lo_bytes(), "agents": sum(a.bytes_up + a.bytes_down for a in dep.agents.values()),
            "certs": sum(a.cert_bytes for a in dep.agents.values())}


def _breakdown(tally: dict[str, int], task: dict[str, int], start: dict, end: dict) -> dict[str, int]:
    """Bytes of one round (between two snapshots) by kind: protocol messages by type, the task (model body,
    identities, other header), certificate fetches, envelope headers and polls (what the agents counted beyond
    those), and the rest of the loopback traffic (TLS records, HTTP/2 and gRPC framing, the key-holder link's
    envelopes, and whatever else used ``lo`` meanwhile)."""
    out = dict(sorted(tally.items())) | {f"task:{k}": v for k, v in task.items()}
    out["certificate_fetches"] = end["certs"] - start["certs"]
    agents = end["agents"] - start["agents"]
    counted = sum(v for k, v in out.items() if k.startswith(("up:", "down:", "task:"))) + out["certificate_fetches"]
    out["envelopes_and_polls"] = agents - counted
    keyholder = sum(v for k, v in tally.items() if k.startswith("keyholder:"))
    out["tls_http2_grpc_and_other"] = end["lo"] - start["lo"] - agents - keyholder
    return out


def over_grpc(scheme: str, updates, weights, options: dict, rounds: int = 2) -> dict:
    """``rounds`` rounds of the same fixed updates; the last one is reported (steady state: clients hold their
    peers' verified certificates), the first one's breakdown too (cold caches: every certificate is fetched)."""
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    t0 = time.perf_counter()
    lo0 = _lo_bytes()
    tallies: list[dict[str, int]] = []
    tasks: list[dict[str, int]] = []
    marks: list[dict[str, int]] = []
    with Deployment(scheme, sources, updates[0].size, options=options, stage_timeout=60.0, rounds=rounds,
                    checkin_timeout=30.0, poll_seconds=5.0) as dep:
        plan, engine = dep.scheme.plan, dep.coordinator.engine
        open_round = engine._open

        def counted_plan(*args, **kw):
            params, role = plan(*args, **kw)
            tallies.append({})
            return params, _Tally(role, tallies[-1])

        def counted_open(cohort, bases, now):
            marks.append(_snapshot(dep))
            open_round(cohort, bases, now)
            rnd = engine.current
            if rnd is not None:  # the envelope every member fetches: header + the model as float32
                tasks.append(_task_parts(pack(rnd.header, model_bytes(engine.state.model)), len(rnd.cohort)))

        dep.scheme.plan = counted_plan  # type: ignore[method-assign]
        engine._open = counted_open  # type: ignore[method-assign]
        records = dep.run(timeout=900)
        marks.append(_snapshot(dep))
    lo_total = _lo_bytes() - lo0
    wall = time.perf_counter() - t0
    if len(records) != rounds or any(r.status != "done" for r in records):
        raise RuntimeError(f"a round failed: {[(r.status, r.reason) for r in records]}")
    parts = [_breakdown(tallies[k], tasks[k], marks[k], marks[k + 1]) for k in range(rounds)]
    rec, n = records[-1], len(updates)
    protocol = rec.bytes_up + rec.bytes_down + rec.keyholder_bytes
    return {"seconds": rec.seconds, "wall_seconds_incl_setup": wall, "rounds": rounds, "protocol_bytes": protocol,
            "task_bytes": rec.task_bytes, "cert_bytes": rec.cert_bytes,
            "transport_bytes": protocol + rec.task_bytes + rec.cert_bytes,
            "first_round_transport_bytes": sum(getattr(records[0], k) for k in (
                "bytes_up", "bytes_down", "keyholder_bytes", "task_bytes", "cert_bytes")),
            "first_round_seconds": records[0].seconds,
            "loopback_bytes": marks[-1]["lo"] - marks[-2]["lo"], "loopback_bytes_all_rounds_incl_setup": lo_total,
            "peak_rss_mb": _rss_mb(), "mean": rec.result.mean,
            "per_client_bytes": {k: v / n for k, v in parts[-1].items()},
            "per_client_bytes_first_round": {k: v / n for k, v in parts[0].items()}}


def _tree_memory_mb() -> tuple[float, float]:
    """Summed (RSS, PSS) of this process's direct children (the `up` processes), from /proc. PSS splits shared
    pages (libraries) among the processes mapping them, so its sum is the memory the tree really occupies."""
    me, rss, pss = os.getpid(), 0, 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != me:
                continue
            fields = dict(line.split(":", 1) for line in (d / "smaps_rollup").read_text().splitlines()[1:])
            rss += int(fields["Rss"].split()[0])
            pss += int(fields["Pss"].split()[0])
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return rss / 1024, pss / 1024


def load_threads(n: int, dim: int) -> dict:
    """n client agents (each its own mTLS channel) on threads of this process against one aggregator."""
    rng = np.random.default_rng(1)
    updates = [rng.uniform(-1, 1, dim) for _ in range(n)]
    weights = [float(w) for w in rng.integers(1, 4, n)]
    base = _rss_mb()
    remote = over_grpc("masking", updates, weights, {})
    expected = sum(w * u for w, u in zip(weights, updates)) / sum(weights)
    err = float(np.max(np.abs(remote.pop("mean") - expected)))
    return {"mode": "threads", "clients": n, "dim": dim, "round_seconds": remote["seconds"],
            "wall_seconds_incl_setup": remote["wall_seconds_incl_setup"], "peak_rss_mb": remote["peak_rss_mb"],
            "peak_rss_mb_before_round": base, "transport_bytes": remote["transport_bytes"],
            "loopback_bytes": remote["loopback_bytes"], "max_abs_error_vs_numpy": err}


def load_processes(n: int, dim: int, out: Path) -> dict:
    """`secagg up`: an aggregator process and n client processes (synthetic trainer of ``dim`` values)."""
    import threading

    from training.deployment import TransportConfig
    from training.services.launcher import launch

    cfg = TransportConfig(scheme="masking", trainer="synthetic", clients=n, rounds=1, dim=dim, out=str(out),
                          certs=str(out / "certs"),
                          checkin_timeout=300.0, stage_timeout=120.0, poll_seconds=10.0).validate()
    peak, done = [0.0, 0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            rss, pss = _tree_memory_mb()
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        rows = launch(cfg, timeout=1200, echo=lambda line: print(f"  {line}", flush=True))
    finally:
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    row = next((r for r in rows if r["status"] == "done"), None)
    if row is None:
        raise RuntimeError(f"the {n}-process round did not finish: {rows}")
    return {"mode": "processes", "clients": n, "dim": dim, "round_seconds": row["seconds"],
            "wall_seconds_incl_startup": wall, "peak_rss_mb_all_processes": peak[0],
            "peak_pss_mb_all_processes": peak[1], "peak_pss_mb_per_process": peak[1] / (n + 1),
            "bytes_up": row["bytes_up"],
            "bytes_down": row["bytes_down"], "contributors": len(row["contributors"])}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for scheme, marker in (("masking", "o"), ("ckks", "s"), ("packed", "^")):
        sel = [r for r in rows if r["scheme"] == scheme]
        if not sel:
            continue
        ns = [r["n"] for r in sel]
        axes[0].plot(ns, [r["in_process"]["seconds"] for r in sel], marker=marker, ls="--",
                     label=f"{scheme} in-process")
        axes[0].plot(ns, [r["grpc"]["seconds"] for r in sel], marker=marker, label=f"{scheme} gRPC+mTLS")
        axes[1].plot(ns, [r["in_process"]["protocol_bytes"] for r in sel], marker=marker, ls="--",
                     label=f"{scheme} in-process")
        axes[1].plot(ns, [r["grpc"]["transport_bytes"] for r in sel], marker=marker, label=f"{scheme} gRPC payloads")
        axes[1].plot(ns, [r["grpc"]["loopback_bytes"] for r in sel], marker=marker, ls=":",
                     label=f"{scheme} loopback total")
    for ax, title in zip(axes, ("seconds per round", "bytes per round")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients n")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"one secure-aggregation round (the 2nd of 2: steady state), dim {rows[0]['dim']} "
                 "(shared 2-core machine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--sizes", default="3,10,100")
    ap.add_argument("--ckks-max", type=int, default=10, help="largest n for the CKKS and packed rows")
    ap.add_argument("--schemes", default="masking,ckks,packed")
    ap.add_argument("--out", default="benchmarks/results/transport.json")
    ap.add_argument("--load", type=int, default=0, help="load mode: one masking round with this many clients")
    ap.add_argument("--load-dim", type=int, default=235_264, help="update size (default: the demo's tiny GPT-2)")
    ap.add_argument("--load-modes", default="threads,processes")
    args = ap.parse_args()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "note": "timings taken on a shared 2-core machine (other jobs running); compare ratios"}
    if args.load:
        out = Path(args.out if args.out != ap.get_default("out") else "benchmarks/results/transport_load.json")
        results = []
        for mode in args.load_modes.split(","):
            if mode == "threads":
                r = load_threads(args.load, args.load_dim)
            else:
                with tempfile.TemporaryDirectory(prefix="secagg-load-") as tmp:
                    r = load_processes(args.load, args.load_dim, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "load": results}, indent=2))
        print(f"wrote {out}")
        return
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for scheme in args.schemes.split(","):
            if scheme in ("ckks", "packed") and n > args.ckks_max:
                continue
            updates = [rng.uniform(-1, 1, args.dim) for _ in range(n)]
            weights = [float(w) for w in rng.integers(1, 4, n)]
            opts = {"ckks": {"min_contributors": 2}, "packed": {"min_contributors": 2, "clip": 1.0}}.get(scheme, {})
            local = in_process(scheme, updates, weights, opts if opts else {"sign": True})
            remote = over_grpc(scheme, updates, weights, opts)  # masking over gRPC signs (the default)
            err = float(np.max(np.abs(remote.pop("mean") - local.pop("mean"))))
            row = {"scheme": scheme, "n": n, "dim": args.dim, "in_process": local, "grpc": remote,
                   "time_ratio": remote["seconds"] / local["seconds"],
                   "bytes_ratio": remote["transport_bytes"] / local["protocol_bytes"],
                   "loopback_bytes_ratio": remote["loopback_bytes"] / local["protocol_bytes"],
                   "max_abs_diff_vs_in_process": err}
            rows.append(row)
            print(f"{scheme:8} n={n:>3} dim={args.dim}: in-process {local['seconds']:.3f} s "
                  f"{local['protocol_bytes']:>12,} B | gRPC {remote['seconds']:.3f} s/round "
                  f"(wall {remote['wall_seconds_incl_setup']:.2f} s) {remote['transport_bytes']:>12,} B "
                  f"(lo {remote['loopback_bytes']:,} B) peak RSS {remote['peak_rss_mb']:.0f} MB | "
                  f"ratio time x{row['time_ratio']:.2f} bytes x{row['bytes_ratio']:.2f} "
                  f"(lo x{row['loopback_bytes_ratio']:.2f}) | diff {err:.1e}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
