"""``secagg up``: every role as its own OS process on loopback, a fresh federation run end to end.

Each child runs in its own process group (``start_new_session``) and logs to ``OUT/logs/<role>.log``; whatever
happens (success, failure, timeout, Ctrl-C) every group is terminated, then killed, before :func:`launch` returns.
The run file is parsed and validated before any process starts; a child that exits before it publishes its port
raises :class:`~training.errors.LaunchError` with that child's own ``error:`` line (each child ends its log with
one, :func:`training.errors.run_cli`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from training.errors import LaunchError
from training.services.pki.certs import init_certs
from training.deployment import TransportConfig
from training.services.node import read_port_file

__all__ = ["launch", "Procs"]


class Procs:
    """Child processes in their own sessions; :meth:`close` ends them all (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        try:
            root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            proc = subprocess.Popen([sys.executable, "-m", "training.services.cli", *args], stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
        finally:
            log.close()
        self.children[name] = proc
        return proc

    def failure(self, name: str, waited: float) -> LaunchError:
        """Why child ``name`` did not come up: its exit status and the last ``error:`` line of its log."""
        proc, log = self.children[name], self.logs / f"{name}.log"
        if proc.poll() is None:
            return LaunchError(f"{name} published no port within {waited:.0f} s (log: {log})")
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        said = next((ln.strip() for ln in reversed(lines) if ln.startswith("error:")),
                    lines[-1].strip() if lines else "no output")
        return LaunchError(f"{name} exited with status {proc.returncode}: {said} (log: {log})")

    def port(self, name: str, path: Path, timeout: float) -> int:
        """The port child ``name`` publishes in ``path``; LaunchError naming its own error if it exits first."""
        try:
            return read_port_file(path, timeout, lambda: self.children[name].poll() is None)
        except TimeoutError:
            raise self.failure(name, timeout) from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.children[name]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        proc.wait(10)

    def close(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 5
        for proc in self.children.values():
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)


def launch(cfg: TransportConfig, *, timeout: float = 600.0, echo: Callable[[str], None] = print) -> list[dict]:
    """Run a fresh federation of ``cfg.clients`` client processes; return the aggregator's metrics rows."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("aggregator.ckpt", "metrics.jsonl", "aggregator.port", "keyholder.port", "aggregator.status.json"):
        (out / stale).unlink(missing_ok=True)
    from training.services.workloads.lm import run_config

    run = run_config(cfg.run_config, cfg) if cfg.trainer == "local" else None  # the run file, checked up front
    init_certs(cfg.certs, cfg.clients)
    if cfg.ledger is None:  # every client's budget continues when `up` runs again with the same --out
        cfg = dataclasses.replace(cfg, ledger=str(out / "ledger") if run is None or not run.dp.ledger
                                  else run.dp.ledger)
    resolved = out / "transport.json"
    resolved.write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    base = ["--resolved", str(resolved)]
    procs = Procs(out / "logs")
    t0 = time.monotonic()
    try:
        # clients build their workload (imports, data, model) while the servers start; they read the published
        # ports afterwards. Servers: the key holder first (the aggregator fetches its public context at start).
        kh_args: list[str] = []
        client_kh: list[str] = []
        needs_keyholder = cfg.scheme in ("ckks", "packed")
        if needs_keyholder:
            procs.start("keyholder", ["keyholder", "serve", *base, "--port-file", str(out / "keyholder.port")])
            client_kh = ["--keyholder-port-file", str(out / "keyholder.port")]
        for i in range(cfg.clients):
            procs.start(f"client-{i}", ["client", "run", "--id", str(i), *base, "--aggregator-port-file",
                                        str(out / "aggregator.port"), *client_kh])
        if needs_keyholder:
            kh_port = procs.port("keyholder", out / "keyholder.port", _left(t0, timeout))
            kh_args = ["--keyholder", f"{cfg.host}:{kh_port}"]
        agg = procs.start("aggregator", ["aggregator", "serve", *base, "--port-file", str(out / "aggregator.port"),
                                         "--checkpoint", str(out / "aggregator.ckpt"), *kh_args])
        port = procs.port("aggregator", out / "aggregator.port", _left(t0, timeout))
        echo(f"up: aggregator on {cfg.host}:{port}, scheme {cfg.scheme}, {cfg.clients} client processes")
        clients = [p for n, p in procs.children.items() if n.startswith("client-")]
        seen, orphaned = 0, None
        while agg.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.2)
            seen = _echo_new(out / "metrics.jsonl", seen, echo)
            if all(p.poll() is not None for p in clients):
                orphaned = orphaned or time.monotonic()
                if time.monotonic() - orphaned > cfg.checkin_timeout + cfg.stage_timeout + 5:
                    echo(f"up: every client process exited; see {out / 'logs'}")
                    break
        _echo_new(out / "metrics.jsonl", seen, echo)
        if agg.poll() is None:
            echo(f"up: timed out after {timeout:.0f} s")
        elif agg.returncode != 0:
            echo(f"up: {procs.failure('aggregator', 0).args[0]}")
    finally:
        procs.close()
    rows = _rows(out / "metrics.jsonl")
    status = out / "aggregator.status.json"
    if status.exists() and json.loads(status.read_text()).get("stop_reason"):
        echo(f"up: the federation stopped: {json.loads(status.read_text())['stop_reason']}")
    echo(f"up: {sum(r['status'] == 'done' for r in rows)} rounds in {time.monotonic() - t0:.1f} s; "
         f"metrics in {out / 'metrics.jsonl'}")
    return rows


def _left(t0: float, timeout: float) -> float:
    return max(1.0, timeout - (time.monotonic() - t0))


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _echo_new(path: Path, seen: int, echo: Callable[[str], None]) -> int:
    rows = _rows(path)
    for r in rows[seen:]:
        loss = f" loss {r['loss']:.5f}" if r.get("loss") is not None else ""
        loss += f" staleness {r['staleness']}" if any(r.get("staleness", {}).values()) else ""
        echo(f"round {r['round']:>3} (id {r['round_id']}): {r['status']:<7} {r['seconds']:6.2f} s "
             f"up {r['bytes_up']:>10,} B down {r['bytes_down']:>10,} B{loss} "
             f"contributors {r.get('contributors', [])} {r['reason']}")
    return len(rows)
