"""The client agent: checks in with the aggregator, trains on the global model, runs its secagg role over gRPC.

One agent is one client identity (its certificate). Per round it (1) checks in with its public weight and the DP
events of its last training (re-sent under the same report id until acknowledged), (2) gets the
task (round parameters and the global model), (3) computes its update with its :class:`UpdateSource`, (4) builds
its own role from the public parameters and exchanges messages until its role is done or the round ends.
A round with private weights (loss-weighted) asks the source for its contribution *and* weight
(:meth:`UpdateSource.contribute`); the weight then goes only into the client's own encrypted or masked lane.
Asynchronous (buffered) strategies: the aggregator answers a check-in without a trained update with the current
model and its version (``model``); the client trains on it at once (its source's ``update``), checks in again
with that ``base`` version and, once it is in a buffer's cohort, encodes the update under the task's public
terms (its source's ``encode``: the staleness weight) and runs the protocol; the task then carries no model.
The model arrives as float32 (:func:`~.wire.model_bytes`). Signed masking tasks name the cohort's signing
certificates by one digest; the agent keeps the ones it verified (:class:`~.peers.PeerCertificates`, seeded
with its own) and fetches the fingerprint listing and the certificates it lacks only when its cache does not
match the digest (``Certificates``), so a steady cohort costs one digest per task.
For CKKS and packed rounds the task names the key holder's public context by hash; a client whose cached context
differs re-fetches it from the key holder (which restarted with a new key) and refuses the round if it still
differs. The client's sealed pad seed goes straight to the key holder (``Seed``, over mTLS), never through the
aggregator. Masking sessions the client took part in are remembered, so a task that reuses a round nonce is
refused.
Every inbound payload is checked before use: the model must be a finite vector of the announced size, the round
id must be the task's, and the client must be in the announced cohort. A refusal from the aggregator ends this
client's part in the round (it rejoins at the next); a crash of the agent is, to the others, a dropout.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from secagg.encoding import validate_update
from secagg.errors import ConfigurationError, MalformedMessageError, SecAggError
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
from training.aggregation import FedAvg
from training.aggregation.base import Strategy
from training.transport.aggregator import POLL_SECONDS
from training.transport.certs import Credentials
from training.transport.peers import PeerCertificates
from training.transport.rpc import Stub, open_channel
from training.engine.roles import Scheme
from training.engine.terms import encode_update
from training.transport.wire import StaleKeyError, TransportError, context_id, field, model_from, pack, unpack
from training.update import ClientUpdate

__all__ = ["UpdateSource", "ClientAgent", "SyntheticSource", "contribution"]

log = logging.getLogger("training.transport.client")


class UpdateSource(Protocol):
    """Where a client's update comes from: ``weight`` is public (announced at check-in).

    ``contribute(model, round_no, terms) -> (vector, weight)`` is the general form: ``terms`` are the round's
    public strategy terms (:mod:`.step`), and the weight is whatever the strategy encodes (secret when
    ``terms["private_weights"]``). Sources without it have public weights only: ``compute`` gives the vector and
    ``weight`` the weight. Sources for asynchronous strategies split ``contribute`` into ``update(model,
    version) -> ClientUpdate`` (local training) and ``encode(update, round_no, terms) -> (vector, weight)``."""

    weight: float

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray: ...


def contribution(source: UpdateSource, model: np.ndarray, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
    """The (vector, weight) ``source`` submits in a round with public strategy ``terms``."""
    contribute = getattr(source, "contribute", None)
    if contribute is not None:
        vector, weight = contribute(model, round_no, terms)
        return vector, float(weight)
    if terms.get("private_weights"):
        raise ConfigurationError("the round asks for private weights; this client's update source has public "
                                 "weights only")
    return source.compute(model, round_no), float(source.weight)


class SyntheticSource:
    """A stand-in local trainer: each client pulls the model halfway toward its own fixed target vector.

    The target is test data drawn from a seeded numpy Generator (nothing secret). The local step is the update
    ``Δ = clip(0.5 (target − model))`` with ``1 + id % 3`` samples and loss ``mean((model − target)²)``; the
    ``strategy`` (default FedAvg) encodes it as in ``secagg run``. Values stay in ``[-clip, clip]``.
    """

    def __init__(self, client_id: int, dim: int, *, seed: int = 0, clip: float = 1.0,
                 strategy: Strategy | None = None) -> None:
        rng = np.random.default_rng([seed, client_id])
        self.client_id = client_id
        self.target = rng.uniform(-0.5, 0.5, dim) * clip
        self.weight = float(1 + client_id % 3)
        self.clip = clip
        self.strategy = FedAvg() if strategy is None else strategy

    def update(self, model: np.ndarray, round_no: int) -> ClientUpdate:
        """The local step from ``model`` (a ClientUpdate, before any encoding)."""
        delta = np.clip(0.5 * (self.target - model), -self.clip, self.clip)
        return ClientUpdate(self.client_id, delta, int(self.weight), float(np.mean((model - self.target) ** 2)),
                            base_version=round_no)

    def encode(self, update: ClientUpdate, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        c = encode_update(self.strategy, update, round_no, terms)
        return np.clip(c.vector, -self.clip, self.clip), c.weight

    def contribute(self, model: np.ndarray, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        return self.encode(self.update(model, round_no), round_no, terms)

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray:
        """The vector of a public-weight round (whose weight is :attr:`weight`)."""
        return self.contribute(model, round_no, {})[0]


class ClientAgent:
    """Runs client ``creds.identity`` against the aggregator at ``address`` (and the key holder, for CKKS)."""

    def __init__(self, creds: Credentials, address: str, scheme: Scheme, source: UpdateSource, *,
                 keyholder_address: str | None = None, max_message_bytes: int = 256 << 20,
                 poll_seconds: float = POLL_SECONDS, patience: float = 60.0, claim: int | None = None) -> None:
        self.creds, self.scheme, self.source = creds, scheme, source
        self.client_id = creds.identity if claim is None else claim
        self.channel = open_channel(creds, address, AGGREGATOR)
        self.stub = Stub(self.channel, "secagg.Aggregator", max_message_bytes)
        self.kh_address, self.limit, self.poll = keyholder_address, max_message_bytes, poll_seconds
        self.patience = patience
        self._context: bytes | None = None
        self.rounds_done = 0
        self.bytes_up = self.bytes_down = 0
        self.cert_bytes = 0  # certificate fetches (also in bytes_down)
        self.peers = PeerCertificates(creds.ca)
        if scheme.needs_identities and creds.sign_cert is not None and claim is None:
            self.peers.add(creds.sign_cert, self.client_id)  # its own certificate is never fetched
        self.stop = threading.Event()
        self.on_task: Callable[[dict], None] | None = None  # test hook: sees each task header before training
        self._report: tuple[str, list[dict]] | None = None  # DP events sent but not yet acknowledged
        self._trained: ClientUpdate | None = None  # asynchronous rounds: trained, waiting for a buffer
        self.sessions: set[bytes] = set()  # masking sessions (round nonces) this client took part in

    def _rpc_timeout(self) -> float:
        return self.poll + 30.0

    def context(self, expected: str | None = None) -> bytes:
        """The key holder's public context, fetched over an mTLS channel that verifies the key holder, and kept;
        re-fetched when ``expected`` (a task's ``context_id``) names another one (StaleKeyError if it still
        differs: the task was made under a key the key holder does not serve)."""
        if self._context is not None and expected is not None and context_id(self._context) != expected:
            log.info("client %d: the round names another public context; re-fetching it", self.client_id)
            self._context = None
        if self._context is None:
            if self.kh_address is None:
                raise TransportError("this scheme needs the key holder's address")
            channel = open_channel(self.creds, self.kh_address, KEYHOLDER)
            try:
                _, self._context = unpack(Stub(channel, "secagg.KeyHolder", self.limit)
                                          .unary_stream("Context", pack({}), 60.0))
            finally:
                channel.close()
        if expected is not None and context_id(self._context) != expected:
            raise StaleKeyError("the round names a public context the key holder does not serve")
        return self._context

    def run(self, max_rounds: int | None = None) -> int:
        """Take part in rounds until the federation finishes, ``max_rounds`` completed, or :attr:`stop` is set."""
        unreachable_since: float | None = None
        while not self.stop.is_set() and (max_rounds is None or self.rounds_done < max_rounds):
            if self._report is None and getattr(self.source, "events", ()):
                self._report = (secrets.token_hex(8), [e.to_dict() for e in self.source.events])
                self.source.events = ()  # type: ignore[attr-defined]  (pending in _report until acknowledged)
            header = {"client_id": self.client_id, "weight": float(self.source.weight)}
            if self.scheme.needs_identities and self.creds.sign_cert is not None:
                header["identity"] = self.creds.sign_cert.decode()
            if self._report is not None:
                header |= {"report": self._report[0], "privacy": self._report[1]}
            if self._trained is not None:
                header["base"] = self._trained.base_version
            try:
                env = self.stub.unary_stream("Checkin", pack(header), self._rpc_timeout())
            except TransportError:  # aggregator down or restarting: retry within the patience window
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > self.patience:
                    raise
                self.stop.wait(0.5)
                continue
            unreachable_since = None
            self._report = None  # acknowledged: the aggregator's checkpointed ledger has it
            self.bytes_down += len(env)
            header, body = unpack(env)
            kind = field(header, "type", str)
            if kind == "finished":
                break
            try:
                if kind == "model":
                    self._train(header, body)
                elif kind == "task":
                    if self.participate(header, body):
                        self.rounds_done += 1
            except SecAggError as exc:
                log.warning("client %d left round %s: %s: %s", self.client_id, header.get("round_id"),
                            type(exc).__name__, exc)
            finally:
                if kind == "task":
                    self._trained = None  # an asynchronous update joins one round at most
        return self.rounds_done

    def _train(self, header: dict, body: bytes) -> None:
        """Asynchronous mode: train on the model version the aggregator sent (kept until a buffer takes it)."""
        version = field(header, "version", int)
        if version < 0:
            raise MalformedMessageError("the model reply has a negative version")
        model = validate_update(model_from(body))
        train = getattr(self.source, "update", None)
        if train is None:
            raise ConfigurationError("an asynchronous strategy needs an update source that trains (update) and "
                                     "encodes (encode) separately")
        self._trained = train(model.copy(), version)

    def participate(self, header: dict, body: bytes) -> bool:
        """One round from its task envelope; True when this client's role finished."""
        round_id = field(header, "round_id", int)
        params = field(header, "params", dict)
        if field(params, "round_id", int) != round_id or self.client_id not in field(params, "cohort", list):
            raise MalformedMessageError("task does not match its round or does not include this client")
        dim = field(params, "dim", int)
        terms = field(params, "strategy", dict, {})
        if self._trained is not None:  # asynchronous: trained already, the task carries no model
            if body or self._trained.delta.size != dim:
                raise MalformedMessageError("an asynchronous task carries no model, and this update has another size")
            bases = field(terms, "base_versions", dict, {})
            if bases.get(str(self.client_id)) != self._trained.base_version:
                raise MalformedMessageError("the task misstates the version this client's update was trained from")
            if self.on_task is not None:
                self.on_task(header)
            vector, weight = self.source.encode(self._trained, field(header, "round", int), terms)  # type: ignore
            return self._run_role(round_id, params, vector, float(weight), dim)
        model = validate_update(model_from(body, dim), dim)
        if self.on_task is not None:
            self.on_task(header)
        vector, weight = contribution(self.source, model.copy(), field(header, "round", int), terms)
        return self._run_role(round_id, params, vector, weight, dim)

    def _run_role(self, round_id: int, params: dict, vector: np.ndarray, weight: float, dim: int) -> bool:
        """Build this client's role from the round's public parameters and exchange messages until it is done."""
        update = validate_update(np.asarray(vector), dim)
        ctx = self.context(field(params, "context_id", str, None)) if self.scheme.needs_keyholder else None
        peers = None
        if "identities" in params:
            peers = self.peers.resolve_roster(field(params, "cohort", list), field(params, "identities", str),
                                              lambda: self._certificates(round_id, None),
                                              lambda ids: self._certificates(round_id, ids))
        signer = self.creds.signer() if peers is not None else None
        role = self.scheme.client_role(self.client_id, params, ctx, signer, peers, sessions=self.sessions)
        self._send(round_id, role.start(update, weight))
        while not role.done and not self.stop.is_set():
            env = self.stub.unary_stream("Receive", pack({"client_id": self.client_id, "round_id": round_id}),
                                         self._rpc_timeout())
            self.bytes_down += len(env)
            head, payload = unpack(env)
            kind = field(head, "type", str)
            if kind == "end":
                log.info("client %d: round %d ended (%s)", self.client_id, round_id, head.get("status"))
                return False
            if kind == "message":
                try:
                    outs = role.receive(payload)
                except SecAggError as exc:  # a bad message from the aggregator: refuse it, keep going
                    log.warning("client %d refused a message: %s: %s", self.client_id, type(exc).__name__, exc)
                    continue
                self._send(round_id, outs)
        return role.done

    def _certificates(self, round_id: int, ids: list[int] | None) -> dict[int, str]:
        """From the aggregator: the signing certificates (PEM, unverified) the open round names for ``ids``, or
        with ``ids`` None the round's fingerprint listing."""
        ask = {"client_id": self.client_id, "round_id": round_id} | ({} if ids is None else {"ids": ids})
        env = self.stub.unary_stream("Certificates", pack(ask), self._rpc_timeout())
        self.bytes_down += len(env)
        self.cert_bytes += len(env)
        _, body = unpack(env)
        try:
            got = json.loads(body)
        except ValueError as exc:
            raise MalformedMessageError(f"the certificate reply is not JSON: {exc}") from exc
        if not isinstance(got, dict) or not all(isinstance(k, str) and k.isdigit() and isinstance(v, str)
                                                for k, v in got.items()):
            raise MalformedMessageError("the certificate reply is not a mapping of client ids to strings")
        return {int(k): v for k, v in got.items()}

    def _send(self, round_id: int, outs: list[Outbound]) -> None:
        for out in outs:
            if out.to not in (AGGREGATOR, KEYHOLDER):
                raise MalformedMessageError(f"client roles talk to the aggregator or key holder, not {out.to}")
            env = pack({"client_id": self.client_id, "round_id": round_id}, out.payload)
            self.bytes_up += len(env)
            if out.to == KEYHOLDER:
                self._keyholder_stub().stream_unary("Seed", env, self._rpc_timeout())
            else:
                self.stub.stream_unary("Send", env, self._rpc_timeout())

    def _keyholder_stub(self) -> Stub:
        if self.kh_address is None:
            raise TransportError("this scheme needs the key holder's address")
        if getattr(self, "_kh_channel", None) is None:
            self._kh_channel = open_channel(self.creds, self.kh_address, KEYHOLDER)
        return Stub(self._kh_channel, "secagg.KeyHolder", self.limit)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import grpc

        deadline = time.monotonic() + timeout
        try:
            grpc.channel_ready_future(self.channel).result(timeout=max(0.1, deadline - time.monotonic()))
        except grpc.FutureTimeoutError as exc:
            raise TransportError("aggregator not reachable") from exc

    def close(self) -> None:
        self.stop.set()
        self.channel.close()
        if getattr(self, "_kh_channel", None) is not None:
            self._kh_channel.close()
