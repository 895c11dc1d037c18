"""One process per role: the key holder, the aggregator and a client, each serving until its work is done.

Each ``run_*`` function blocks. Bound ports are published through ``port_file`` (written atomically), so
launchers and tests can use ephemeral ports. The aggregator writes ``metrics.jsonl`` (one JSON object per
attempt) into ``cfg.out`` and checkpoints to ``checkpoint`` after every applied round, resuming from it on start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path


from secagg.roles import AGGREGATOR, KEYHOLDER
from training.services import checkpoint as ckpt
from training.services.aggregator import KeyHolderLink, serve_aggregator
from training.services.pki.certs import Credentials
from training.services.client import ClientAgent
from training.deployment import TransportConfig
from training.services.coordinator import Coordinator, RoundPolicy, RoundRecord
from training.services.keyholder import serve_keyholder
from training.engine.central import central_account, central_of
from training.engine.metrics import metrics_of, placement_of
from training.engine.audit import ModelAudit
from training.engine.roles import make_keyholder, make_scheme
from training.services.workloads import make_workload

__all__ = ["run_keyholder", "run_aggregator", "run_client", "write_port_file", "read_port_file"]

log = logging.getLogger("training.services")


def write_port_file(path: str | os.PathLike | None, port: int) -> None:
    if path is None:
        return
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, p)


def read_port_file(path: str | os.PathLike, timeout: float, alive=lambda: True) -> int:
    """Wait up to ``timeout`` s for a port file to appear (``alive()`` false aborts early)."""
    end = time.monotonic() + timeout
    p = Path(path)
    while time.monotonic() < end and alive():
        if p.exists():
            return int(p.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"no port published in {p}")


def _on_term(stop) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop())


def run_keyholder(cfg: TransportConfig, *, port_file: str | None = None) -> None:
    """Generate the keys (CKKS or packed) and serve them until SIGTERM/SIGINT. The secret key is never written
    anywhere: a restarted key holder has new keys (see :mod:`.keyholder` for how the federation recovers)."""
    creds = Credentials.load(cfg.certs, KEYHOLDER)
    kh = make_keyholder(cfg.scheme, cfg.scheme_options())
    server, port = serve_keyholder(kh, creds, cfg.host, cfg.keyholder_port, max_message_bytes=cfg.max_message_bytes)
    write_port_file(port_file, port)
    log.info("key holder serving on %s:%d", cfg.host, port)
    done = threading.Event()
    _on_term(done.set)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    server.stop(1).wait()


def run_aggregator(cfg: TransportConfig, *, checkpoint: str, keyholder: str | None = None,
                   port_file: str | None = None, linger: float = 2.0,
                   exit_after_rounds: int | None = None) -> ckpt.ServerState:
    """Resume from ``checkpoint`` (or start fresh), serve until ``cfg.rounds`` rounds are applied, return the state.

    ``exit_after_rounds`` injects a crash: the process exits abruptly (no cleanup) right after that many rounds of
    this run were applied and checkpointed.
    """
    applied = [0]
    creds = Credentials.load(cfg.certs, AGGREGATOR)
    work = make_workload(cfg)
    state = ckpt.load(checkpoint) or ckpt.ServerState(work.initial_model())
    if state.model.size != work.dim:
        raise ValueError(f"checkpoint model has {state.model.size} values, the workload {work.dim}")
    scheme = make_scheme(cfg.scheme, cfg.scheme_options())
    link = context = finalize = None
    if scheme.needs_keyholder:
        if keyholder is None:
            raise ValueError(f"scheme {cfg.scheme} needs --keyholder HOST:PORT")
        link = KeyHolderLink(creds, keyholder, cfg.max_message_bytes, timeout=max(60.0, cfg.poll_seconds + 30.0))
        context, finalize = link.context(), link.finalize
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    central = central_account(cfg.noise_multiplier, noise_shares=cfg.cohort_size, delta=work.ledger_budget[1],
                              dim=work.dim, colluders=work.colluders, scheme=cfg.scheme, neighbors=cfg.neighbors,
                              threshold=cfg.threshold, share_dropouts=cfg.share_dropouts, max_corrupt=cfg.max_corrupt)

    def on_round(rec: RoundRecord) -> None:
        loss = work.evaluate(coord.state.model)["loss"] if rec.status == "done" else None
        eps = {int(c): ledger["spent"] for c, ledger in coord.state.ledgers.items()}
        row = metrics_of(rec, loss=loss, epsilon_per_client=eps, language_model=cfg.trainer == "local",
                         **central_of(central, rec), **placement_of(coord.engine.placements))
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row.as_json(), sort_keys=True) + "\n")
        applied[0] += rec.status == "done"
        if exit_after_rounds is not None and applied[0] >= exit_after_rounds:
            log.warning("injected crash after %d rounds", applied[0])
            os._exit(9)

    trains_in_round = cfg.trainer == "local" and cfg.aggregator != "async"  # async clients train before joining
    policy = RoundPolicy(cfg.rounds, cfg.cohort_size, cfg.min_cohort, cfg.checkin_timeout, cfg.stage_timeout,
                         train_timeout=cfg.train_timeout if trains_in_round else 0.0, clients=cfg.clients)
    coord = Coordinator(scheme, state, policy, checkpoint_path=checkpoint, context=context, finalize=finalize,
                        step=work.step(), on_round=on_round, ledger_budget=work.ledger_budget,
                        refresh=None if link is None else link.refresh)
    server, port = serve_aggregator(coord, creds, cfg.host, cfg.aggregator_port,
                                    max_message_bytes=cfg.max_message_bytes, workers=2 * cfg.clients + 16,
                                    poll_seconds=cfg.poll_seconds)
    write_port_file(port_file, port)
    log.info("aggregator serving on %s:%d from round %d (next round id %d)", cfg.host, port, state.round,
             state.next_round_id)
    _on_term(coord.stop)
    try:
        coord.run()
        if coord.failure is not None:
            raise coord.failure
        time.sleep(linger)  # let waiting clients hear "finished" (and report their last privacy events)
        coord.save()
        (out / "aggregator.status.json").write_text(json.dumps(
            {"rounds": state.round, "stop_reason": coord.engine.stop_reason,
             "withdrawn": {str(c): r for c, r in coord.engine.retired.items()}}, indent=1))
        if coord.engine.stop_reason:
            log.warning("the federation stopped: %s", coord.engine.stop_reason)
    except KeyboardInterrupt:
        coord.stop()
    finally:
        server.stop(1).wait()
        if link is not None:
            link.close()
    return state


class _Crashing(ClientAgent):
    """Fault injection: the process dies abruptly (``os._exit``, no cleanup) after ``exit_after`` messages."""

    def __init__(self, *args, exit_after: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.exit_after, self.sent = exit_after, 0

    def _send(self, round_id, outs):
        for out in outs:
            if self.sent >= self.exit_after:
                log.warning("client %d: injected crash after %d messages", self.client_id, self.sent)
                os._exit(17)
            super()._send(round_id, [out])
            self.sent += 1


def _resolve(address: str | None, port_file: str | None, host: str, what: str) -> str | None:
    """``address``, else ``host:<port>`` from ``port_file`` (waiting for it to be published)."""
    if address is not None or port_file is None:
        return address
    port = read_port_file(port_file, 600)
    log.info("%s published on %s:%d", what, host, port)
    return f"{host}:{port}"


def run_client(cfg: TransportConfig, client_id: int, *, aggregator: str | None, keyholder: str | None = None,
               aggregator_port_file: str | None = None, keyholder_port_file: str | None = None,
               exit_after: int | None = None) -> int:
    """Take part in rounds as ``client-<id>`` until the federation finishes; returns rounds completed.

    Addresses may instead come from port files, read once the (slow) workload is built, so a launcher can start
    clients while the servers are still starting. ``exit_after`` injects a crash: the process exits abruptly
    instead of sending its ``exit_after + 1``-th message.
    """
    creds = Credentials.load(cfg.certs, client_id)
    work = make_workload(cfg)
    keyholder = _resolve(keyholder, keyholder_port_file, cfg.host, "key holder")
    aggregator = _resolve(aggregator, aggregator_port_file, cfg.host, "aggregator")
    if aggregator is None:
        raise ValueError("a client needs the aggregator's address or port file")
    kw = {} if exit_after is None else {"exit_after": exit_after}
    agent = (ClientAgent if exit_after is None else _Crashing)(
        creds, aggregator, make_scheme(cfg.scheme, cfg.scheme_options()), work.source(client_id),
        keyholder_address=keyholder, max_message_bytes=cfg.max_message_bytes, poll_seconds=cfg.poll_seconds,
        part_chunks=cfg.part_chunks, **kw)
    agent.session.audit = ModelAudit(agent.scheme, work.step())  # checks every model it is sent
    _on_term(agent.stop.set)
    try:
        return agent.run()
    finally:
        agent.close()
