"""The aggregator's gRPC service (``secagg.Aggregator``) over a :class:`~.coordinator.Coordinator`.

Methods (each carries one envelope per direction, chunked to 1 MiB):

* ``Checkin``  (unary→stream)  ``{"weight", "privacy"?, "report"?, "identity"?, "base"?}`` → the next round's
  task (header + global model) | idle | finished | (asynchronous strategies) model + version to train on;
  ``privacy`` lists DP events under the report id ``report`` (see Coordinator.checkin); ``base`` is the version
  a trained update started from; ``identity`` is the client's signing certificate (PEM), required for signed
  masking
* ``Send``     (stream→unary)  ``{"round_id"}`` + one secagg message → ``{"ok": true}``
* ``Receive``  (unary→stream)  ``{"round_id"}`` → the next secagg message for the caller | end | idle
* ``Certificates`` (unary→stream) ``{"round_id", "ids"?}`` → body: JSON ``{id: signing certificate PEM}`` of those
  members of the caller's open signed round, or without ``ids`` ``{id: fingerprint}`` of all of them (for a caller
  whose cached certificates do not match the task's roster digest; see :mod:`.peers`)
* ``Status``   (unary→stream)  → round counter, waiting clients, rejection counts (any authenticated peer)

The caller's client id is the one in its verified certificate. A header may repeat it as ``client_id``; a value
that differs from the certificate is refused as ``AuthenticationError``. The key-holder link (:class:`KeyHolderLink`)
is this process's client of ``secagg.KeyHolder``.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from secagg.errors import AuthenticationError, MalformedMessageError
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
from training.services.pki.certs import Credentials, verify_signing_identity
from training.services.rpc import peer_identity
from training.services.coordinator import Coordinator
from training.services.rpc import Stub, guarded, guarded_stream, open_channel, start_server
from training.services.wire import TransportError, field, join, pack, split, unpack

__all__ = ["AggregatorService", "KeyHolderLink", "serve_aggregator", "status_of", "encode_outbounds",
           "decode_outbounds", "POLL_SECONDS"]

SERVICE = "secagg.Aggregator"
POLL_SECONDS = 10.0


def _client(context: grpc.ServicerContext, header: dict) -> int:
    cid = peer_identity(context)
    if cid < 0:
        raise AuthenticationError("only client certificates may call the aggregator's client methods")
    claimed = field(header, "client_id", int, cid)
    if claimed != cid:
        raise AuthenticationError(f"certificate says client {cid} but the message claims client {claimed}")
    return cid


MAX_REQUEST = 64 << 10  # check-in, receive and status requests are small JSON headers


def _small(request: bytes) -> dict:
    if len(request) > MAX_REQUEST:
        raise MalformedMessageError("request envelope too large")
    header, body = unpack(request)
    if body:
        raise MalformedMessageError("this request carries no body")
    return header


class AggregatorService:
    """gRPC front of a coordinator; ``max_message_bytes`` bounds every reassembled client message."""

    def __init__(self, coordinator: Coordinator, max_message_bytes: int, poll_seconds: float = POLL_SECONDS, *,
                 ca: bytes | None = None) -> None:
        self.coord, self.limit, self.poll, self.ca = coordinator, int(max_message_bytes), float(poll_seconds), ca
        self.on_refusal = coordinator.note_rejection  # every refused request is counted (see rpc.guarded)

    @guarded_stream
    def Checkin(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        header = _small(request)
        cid = _client(context, header)
        weight = field(header, "weight", (int, float))
        privacy = field(header, "privacy", list, [])
        report = field(header, "report", str, "")
        base = field(header, "base", int, None)
        retire = field(header, "retire", str, None)
        verified = field(header, "verified", int, None)
        identity = None
        if self.coord.scheme.needs_identities:
            pem = field(header, "identity", str, None)
            if pem is None or self.ca is None:
                raise AuthenticationError("this deployment signs masking rounds: check in with a signing certificate")
            identity = verify_signing_identity(self.ca, pem, cid)
        yield from split(self.coord.checkin(cid, float(weight), self.poll, context.is_active, privacy, report,
                                            identity, base, retire, verified, field(header, "placement", dict, None)))

    @guarded
    def Send(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        header, payload = unpack(join(request_iterator, self.limit))
        cid = _client(context, header)
        self.coord.send(cid, field(header, "round_id", int), payload, field(header, "privacy", list, []),
                        field(header, "report", str, ""))
        return pack({"ok": True})

    @guarded_stream
    def Receive(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        header = _small(request)
        cid = _client(context, header)
        yield from split(self.coord.receive(cid, field(header, "round_id", int), self.poll, context.is_active))

    @guarded_stream
    def Certificates(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        header = _small(request)
        cid = _client(context, header)
        ids = field(header, "ids", list, None)
        if ids is not None and not (ids and all(type(c) is int for c in ids)):
            raise MalformedMessageError("ids must be a non-empty list of client ids")
        yield from split(pack({}, self.coord.certificates(cid, field(header, "round_id", int), ids)))

    @guarded_stream
    def Status(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        peer_identity(context)
        yield pack(self.coord.status())

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Checkin": grpc.unary_stream_rpc_method_handler(self.Checkin),
            "Send": grpc.stream_unary_rpc_method_handler(self.Send),
            "Receive": grpc.unary_stream_rpc_method_handler(self.Receive),
            "Certificates": grpc.unary_stream_rpc_method_handler(self.Certificates),
            "Status": grpc.unary_stream_rpc_method_handler(self.Status),
        })


class KeyHolderLink:
    """The aggregator's authenticated client of the key holder: fetch the public context, finalize sums."""

    def __init__(self, creds: Credentials, address: str, limit: int, timeout: float = 60.0) -> None:
        self.channel = open_channel(creds, address, KEYHOLDER)
        self.stub = Stub(self.channel, "secagg.KeyHolder", limit)
        self.timeout = timeout

    def context(self, wait: float = 30.0) -> bytes:
        """The key holder's public context (waits up to ``wait`` s for it to be reachable; TransportError else)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=wait)
        except grpc.FutureTimeoutError as exc:
            raise TransportError(f"key holder not reachable within {wait} s") from exc
        header, body = unpack(self.stub.unary_stream("Context", pack({}), self.timeout))
        return body

    def refresh(self) -> bytes:
        """The context again, after a failure (a short wait: the round engine is blocked meanwhile)."""
        return self.context(wait=5.0)

    def finalize(self, round_id: int, payload: bytes) -> list[Outbound]:
        header, body = unpack(self.stub.stream_stream("Finalize", pack({"round_id": round_id}, payload),
                                                      self.timeout))
        return decode_outbounds(header, body)

    def close(self) -> None:
        self.channel.close()


def encode_outbounds(outs: list[Outbound]) -> bytes:
    """Pack a role's outbound list into one envelope: header lists ``[to, length]`` pairs, body concatenates."""
    return pack({"outs": [[o.to, len(o.payload)] for o in outs]}, b"".join(o.payload for o in outs))


def decode_outbounds(header: dict, body: bytes) -> list[Outbound]:
    outs, pos = [], 0
    for item in field(header, "outs", list):
        if not (isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item) and item[1] >= 0):
            raise MalformedMessageError("bad outbound entry")
        outs.append(Outbound(item[0], body[pos:pos + item[1]]))
        pos += item[1]
    if pos != len(body):
        raise MalformedMessageError("outbound lengths do not cover the body")
    return outs


def serve_aggregator(coordinator: Coordinator, creds: Credentials, host: str, port: int, *,
                     max_message_bytes: int, workers: int, poll_seconds: float = POLL_SECONDS
                     ) -> tuple[grpc.Server, int]:
    """Start the aggregator's mTLS server (the coordinator's driver thread is the caller's to run)."""
    if creds.identity != AGGREGATOR:
        raise AuthenticationError("the aggregator must serve with the aggregator certificate")
    service = AggregatorService(coordinator, max_message_bytes, poll_seconds, ca=creds.ca)
    return start_server(creds, [service.handler()], host, port, workers)


def status_of(stub: Stub, timeout: float = 5.0) -> dict:
    """The aggregator's status header (round counter, waiting clients, rejection counts)."""
    return unpack(stub.unary_stream("Status", pack({}), timeout))[0]
