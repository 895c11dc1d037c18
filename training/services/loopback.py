"""A whole deployment inside one process (servers and client agents on threads, real gRPC + mTLS on loopback).

Used by the tests and the benchmark: it exercises exactly the network code of the multi-process deployment,
minus process boundaries. :meth:`Deployment.close` always stops every agent and server.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from secagg.roles import AGGREGATOR, KEYHOLDER
from training.services.aggregator import KeyHolderLink, serve_aggregator
from training.services.pki.certs import Credentials, init_certs
from training.services.checkpoint import ServerState
from training.services.client import ClientAgent
from training.services.workloads import UpdateSource
from training.services.coordinator import Coordinator, RoundPolicy, RoundRecord
from training.services.keyholder import serve_keyholder
from training.engine.roles import make_keyholder, make_scheme
from training.engine.terms import StrategyStep

__all__ = ["Deployment", "FixedSource"]


class FixedSource:
    """An update source that always submits the same vector (tests compare against ``secagg.simulate``)."""

    def __init__(self, update: np.ndarray, weight: float) -> None:
        self.update, self.weight = np.asarray(update, dtype=np.float64), float(weight)

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray:
        return self.update


class Deployment:
    """Key holder (ckks, packed), aggregator and one :class:`ClientAgent` thread per source, all on 127.0.0.1.
    ``step`` is the server half of the strategy (default FedAvg); ``keyholder`` a ready key-holder role."""

    def __init__(self, scheme: str, sources: Mapping[int, UpdateSource], dim: int, *, rounds: int = 1,
                 options: dict | None = None, certs: str | Path | None = None, stage_timeout: float = 5.0,
                 checkin_timeout: float = 2.0, min_clients: int | None = None, poll_seconds: float = 2.0,
                 max_message_bytes: int = 256 << 20, keyholder=None, checkpoint_path: str | None = None,
                 initial: np.ndarray | None = None, cert_clients: int | None = None,
                 train_timeout: float = 0.0, step: StrategyStep | None = None) -> None:
        self._tmp = None
        self.threads: list[threading.Thread] = []
        self.errors: dict[int, BaseException] = {}
        if certs is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="secagg-certs-")
            certs = self._tmp.name
            init_certs(certs, cert_clients or max(sources) + 1)
        self.certs, self.sources = str(certs), dict(sources)
        if scheme == "packed":  # the key holder's lane layout is fixed for the deployment's largest cohort
            options = {"max_cohort": max(2, len(self.sources))} | dict(options or {})
        self.scheme = make_scheme(scheme, options)
        self.records: list[RoundRecord] = []
        self.servers: list = []
        self.link = None
        self.keyholder_address = None
        self.limit = max_message_bytes
        context = finalize = None
        try:
            if self.scheme.needs_keyholder:
                if keyholder is None:
                    keyholder = make_keyholder(scheme, self.scheme.options)
                server, kport = serve_keyholder(keyholder, Credentials.load(certs, KEYHOLDER), "127.0.0.1", 0,
                                                max_message_bytes=max_message_bytes)
                self.servers.append(server)
                self.keyholder_address = f"127.0.0.1:{kport}"
                self.keyholder_port = kport
                self.link = KeyHolderLink(Credentials.load(certs, AGGREGATOR), self.keyholder_address,
                                          max_message_bytes)
                context, finalize = self.link.context(), self.link.finalize
            n = len(self.sources)
            if step is not None and step.buffer_size is not None:  # asynchronous: each buffer holds K arrivals
                n = min(n, step.buffer_size)
            policy = RoundPolicy(rounds, n, min_clients or n, checkin_timeout, stage_timeout,
                                 train_timeout=train_timeout)
            state = ServerState(np.zeros(dim) if initial is None else np.asarray(initial, dtype=np.float64))
            self.coordinator = Coordinator(self.scheme, state, policy, context=context, finalize=finalize,
                                           on_round=self.records.append, checkpoint_path=checkpoint_path,
                                           step=step, refresh=None if self.link is None else self.link.refresh)
            server, port = serve_aggregator(self.coordinator, Credentials.load(certs, AGGREGATOR), "127.0.0.1", 0,
                                            max_message_bytes=max_message_bytes, workers=2 * n + 16,
                                            poll_seconds=poll_seconds)
            self.servers.append(server)
            self.address = f"127.0.0.1:{port}"
            self.agents = {cid: self.agent(cid, src, poll_seconds) for cid, src in self.sources.items()}
        except BaseException:
            self.close()
            raise

    def agent(self, cid: int, source: UpdateSource, poll_seconds: float = 2.0, cls: type = ClientAgent,
              **kw) -> ClientAgent:
        """A client agent (of class ``cls``) wired to this deployment; not started."""
        return cls(Credentials.load(self.certs, cid), self.address, self.scheme, source,
                   keyholder_address=self.keyholder_address, max_message_bytes=self.limit,
                   poll_seconds=poll_seconds, **kw)

    def start_agent(self, cid: int) -> None:
        """Run ``self.agents[cid]`` on its own thread (agents added after :meth:`run` began join late)."""
        t = threading.Thread(target=self._run_agent, args=(cid,), daemon=True)
        t.start()
        self.threads.append(t)

    def _run_agent(self, cid: int) -> None:
        try:
            self.agents[cid].run()
        except BaseException as exc:  # recorded for the caller; a client failure must not hang the run
            self.errors[cid] = exc

    def run(self, timeout: float = 60.0) -> list[RoundRecord]:
        """Run the coordinator to completion with every agent on its own thread; return the round records."""
        driver = threading.Thread(target=self.coordinator.run, daemon=True)
        driver.start()
        for cid in list(self.agents):
            self.start_agent(cid)
        driver.join(timeout)
        if driver.is_alive():
            self.coordinator.stop()
            driver.join(10)
            raise TimeoutError(f"deployment did not finish in {timeout} s: {self.coordinator.status()}")
        if self.coordinator.failure is not None:
            raise RuntimeError("the aggregator failed") from self.coordinator.failure
        for t in self.threads:
            t.join(timeout=10)
        return self.records

    def close(self) -> None:
        if hasattr(self, "coordinator"):
            self.coordinator.stop()
        for agent in getattr(self, "agents", {}).values():
            agent.close()
        for t in getattr(self, "threads", []):
            t.join(timeout=5)
        if self.link is not None:
            self.link.close()
        for server in self.servers:
            server.stop(0).wait()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
