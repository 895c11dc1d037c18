"""The client agent: the gRPC driver of the engine's client side (:class:`~training.engine.client.ClientSession`).

One agent is one client identity (its certificate). Per round it checks in (the session's header: public weight,
pending DP events, the base version of a trained update), gets a task or (asynchronous) a model to train on, lets
the session validate the task and compute the contribution, builds the role, and exchanges messages until the
role is done or the round ends. The model arrives as float32 (:func:`~.wire.model_bytes`). Signed masking tasks
name the cohort's signing certificates by one digest; the agent keeps the ones it verified
(:class:`~.peers.PeerCertificates`, seeded with its own) and fetches what its cache lacks. For CKKS and packed
rounds the task names the key holder's public context by hash; a client whose cached context differs re-fetches
it from the key holder and refuses the round if it still differs. Pad seeds go straight to the key holder
(``Seed``, over mTLS), never through the aggregator. A refusal from the aggregator ends this client's part in the
round (it rejoins at the next); a crash of the agent is, to the others, a dropout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable


from secagg.errors import BackpressureError, MalformedMessageError, SecAggError
from secagg.he_round import TagKeyRequest
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
from training.services.aggregator import POLL_SECONDS
from training.services.pki.certs import Credentials
from training.services.pki.peers import PeerCertificates
from training.services.rpc import Stub, open_channel
from training.engine.client import ClientSession
from training.engine.roles import Scheme
from training.engine.codec import proofs_in
from training.services.wire import StaleKeyError, TransportError, context_id, field, model_from, pack, unpack
from training.services.workloads import UpdateSource

__all__ = ["ClientAgent"]

log = logging.getLogger("training.services.client")


class ClientAgent:
    """Runs client ``creds.identity`` against the aggregator at ``address`` (and the key holder, for CKKS)."""

    def __init__(self, creds: Credentials, address: str, scheme: Scheme, source: UpdateSource, *,
                 keyholder_address: str | None = None, max_message_bytes: int = 256 << 20,
                 poll_seconds: float = POLL_SECONDS, patience: float = 60.0, claim: int | None = None,
                 part_chunks: int | None = None) -> None:
        self.creds, self.scheme, self.source = creds, scheme, source
        self.part_chunks = part_chunks  # streamed parts' size (None: the role's default)
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
        self.session = ClientSession(self.client_id, scheme, source)  # the engine's client side
        self._report: dict = {}  # the privacy report for the open round's first message (see _send)

    def _rpc_timeout(self) -> float:
        return self.poll + 30.0

    def context(self, expected: str | None = None) -> bytes:
        """The key holder's public context, fetched over an mTLS channel that verifies the key holder, and kept;
        re-fetched when ``expected`` (a task's ``context_id``) names another one (StaleKeyError if it still
        differs: the task was made under a key the key holder does not serve). The session's tag key is asked
        for with it, on the same verified channel, and replaced whenever the context is."""
        if self._context is not None and expected is not None and context_id(self._context) != expected:
            log.info("client %d: the round names another public context; re-fetching it", self.client_id)
            self._context = None
        if self._context is None:
            if self.kh_address is None:
                raise TransportError("this scheme needs the key holder's address")
            channel = open_channel(self.creds, self.kh_address, KEYHOLDER)
            try:
                stub = Stub(channel, "secagg.KeyHolder", self.limit)
                _, context = unpack(stub.unary_stream("Context", pack({}), 60.0))
                request = TagKeyRequest(context, self.client_id)  # direct mTLS channel: no signature needed
                _, grant = unpack(stub.stream_unary("TagKey", pack({}, request.payload), 60.0))
                self.session.tag_key, self._context = request.open(grant), context
            finally:
                channel.close()
        if expected is not None and context_id(self._context) != expected:
            raise StaleKeyError("the round names a public context the key holder does not serve")
        return self._context

    def run(self, max_rounds: int | None = None) -> int:
        """Take part in rounds until the federation finishes, ``max_rounds`` completed, or :attr:`stop` is set."""
        unreachable_since: float | None = None
        while not self.stop.is_set() and (max_rounds is None or self.rounds_done < max_rounds):
            header = self.session.checkin()
            if self.scheme.needs_identities and self.creds.sign_cert is not None:
                header["identity"] = self.creds.sign_cert.decode()
            try:
                env = self.stub.unary_stream("Checkin", pack(header), self._rpc_timeout())
            except TransportError:  # aggregator down or restarting: retry within the patience window
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > self.patience:
                    raise
                self.stop.wait(0.5)
                continue
            unreachable_since = None
            self.session.acknowledged()
            if self.session.retired is not None:  # withdrew for good: the aggregator has heard why
                raise self.session.retired
            self.bytes_down += len(env)
            header, body = unpack(env)
            kind = field(header, "type", str)
            if kind == "finished":
                break
            try:
                if kind == "model":
                    ctx = self.context() if self.scheme.needs_keyholder else None
                    proofs, model = proofs_in(field(header, "proofs", list, []), body)
                    self.session.on_model(field(header, "version", int), model_from(model), proofs, ctx)
                elif kind == "task" and self.participate(header, body):
                    self.rounds_done += 1
            except SecAggError as exc:
                log.warning("client %d left round %s: %s: %s", self.client_id, header.get("round_id"),
                            type(exc).__name__, exc)
        return self.rounds_done

    def participate(self, header: dict, body: bytes) -> bool:
        """One round from its task envelope; True when this client's role finished."""
        if self.on_task is not None:
            self.on_task(header)
        params = field(header, "params", dict)
        ctx = self.context(field(params, "context_id", str, None)) if self.scheme.needs_keyholder else None
        proofs, model = proofs_in(field(header, "proofs", list, []), body)
        round_id, params, vector, weight = self.session.on_task(
            {**header, "proofs": proofs}, model_from(model, field(params, "dim", int)) if len(model) else None, ctx)
        peers = None
        if "identities" in params:
            peers = self.peers.resolve_roster(field(params, "cohort", list), field(params, "identities", str),
                                              lambda: self._certificates(round_id, None),
                                              lambda ids: self._certificates(round_id, ids))
        role = self.session.role(params, ctx, self.creds.signer() if peers is not None else None, peers)
        self._report = self.session.report_header()  # rides on the round's first message to the aggregator
        stream = getattr(role, "stream", None)  # streamed: each part made as it is sent, never all at once
        size = {} if self.part_chunks is None else {"part_chunks": self.part_chunks}
        self._send(round_id, stream(vector, weight, **size) if stream is not None else role.start(vector, weight))
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

    def _send(self, round_id: int, outs: Iterable[Outbound]) -> None:
        """Send the role's messages (a streamed answer: each as it is made); a pending privacy report
        (``_report``) rides on the first to the aggregator, so the round's metrics count this round's training (it
        stays pending until a check-in is answered). A part the aggregator's window refuses
        (``BackpressureError``) is sent again, backing off, until the RPC timeout has passed."""
        for out in outs:
            if out.to not in (AGGREGATOR, KEYHOLDER):
                raise MalformedMessageError(f"client roles talk to the aggregator or key holder, not {out.to}")
            head = {"client_id": self.client_id, "round_id": round_id}
            if out.to == AGGREGATOR and self._report:
                head, self._report = head | self._report, {}
            env = pack(head, out.payload)
            self.bytes_up += len(env)
            if out.to == KEYHOLDER:
                self._keyholder_stub().stream_unary("Seed", env, self._rpc_timeout())
                continue
            deadline, wait = time.monotonic() + self._rpc_timeout(), 0.01
            while True:
                try:
                    self.stub.stream_unary("Send", env, self._rpc_timeout())
                    break
                except BackpressureError:
                    if time.monotonic() + wait > deadline or self.stop.is_set():
                        raise
                    time.sleep(wait)
                    wait = min(2 * wait, 0.5)

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
