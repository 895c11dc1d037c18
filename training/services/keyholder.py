"""The CKKS key holder's gRPC service (``secagg.KeyHolder``): public context to anyone, decryption to one caller.

* ``Context``  (unary→stream)  → the public bundle (context without secret key, sealing key), to any role;
* ``TagKey``   (stream→unary)  a client's tag-key request → the grant sealed to that client's key (clients only);
* ``Seed``     (stream→unary)  a client's sealed pad seed, from that client only (its certificate is the sender);
* ``Finalize`` (stream→stream) ``{"round_id"}`` + an aggregate → the finalizer's outbound messages.

Serves either scheme with a key holder: CKKS (:class:`secagg.ckks.KeyHolder`) or packed BFV
(:class:`secagg.packed.PackedKeyHolder`); each role applies its own checks (contributor count, one decryption per
round, ciphertext parameters matching its session) before it decrypts anything.

Invariants: ``Finalize`` is served only to the peer whose certificate names the aggregator; round ids must
strictly increase and match the round id inside the aggregate, so an aggregate from any earlier round (a replay)
is refused as ``WrongRoundError``; an aggregate made under another public key than this process's is refused as
``StaleKeyError`` (see below); a refused request changes nothing, so the genuine aggregate of the same round is
still accepted afterwards. Calls are serialized: the secret-key object sees one request at a time.

Restarts: the secret key lives only in this process's memory and is never written to disk. A restarted key
holder has a fresh key pair, and its round counter starts over, which is safe because nothing made under the old
key can be decrypted by it: every aggregate of an earlier process is refused as ``StaleKeyError`` (never decrypted
into a wrong sum); the aggregator then re-fetches the public context and retries the round under the new key,
and clients re-fetch the context when a task names a context id other than theirs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from secagg.errors import AuthenticationError
from secagg.roles import AGGREGATOR, KEYHOLDER, FinalizerRole
from training.engine.keyholder import KeyHolderDesk
from training.services.aggregator import encode_outbounds
from training.services.pki.certs import Credentials
from training.services.rpc import peer_identity
from training.services.rpc import guarded, guarded_stream, start_server
from training.services.wire import field, join, pack, split, unpack

__all__ = ["KeyHolderService", "serve_keyholder"]

SERVICE = "secagg.KeyHolder"


class KeyHolderService:
    """Serves ``keyholder`` (a FinalizerRole with ``public_context()``); ``max_message_bytes`` bounds requests."""

    def __init__(self, keyholder: FinalizerRole, max_message_bytes: int) -> None:
        self.desk, self.limit = KeyHolderDesk(keyholder), int(max_message_bytes)
        self.lock = threading.Lock()

    @guarded_stream
    def Context(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        peer_identity(context)
        yield from split(pack({"type": "context"}, self.desk.context))

    def _from_client(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext, what: str
                     ) -> tuple[int, bytes]:
        """The sending client's id (from its certificate) and its payload; any other party is refused."""
        sender = peer_identity(context)
        if sender < 0:
            raise AuthenticationError(f"only clients {what}")
        return sender, unpack(join(request_iterator, self.limit))[1]

    @guarded
    def TagKey(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        sender, payload = self._from_client(request_iterator, context, "receive the tag key")
        with self.lock:
            grant = self.desk.grant(sender, payload)
        return pack({"type": "grant"}, grant)

    @guarded
    def Seed(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        sender, payload = self._from_client(request_iterator, context, "send pad seeds")
        with self.lock:
            self.desk.seed(sender, payload)
        return pack({"ok": True})

    @guarded_stream
    def Finalize(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        if peer_identity(context) != AGGREGATOR:
            raise AuthenticationError("only the aggregator may submit aggregates to the key holder")
        header, payload = unpack(join(request_iterator, self.limit))
        with self.lock:
            outs = self.desk.finalize(field(header, "round_id", int), payload)
        yield from split(encode_outbounds(outs))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Context": grpc.unary_stream_rpc_method_handler(self.Context),
            "TagKey": grpc.stream_unary_rpc_method_handler(self.TagKey),
            "Seed": grpc.stream_unary_rpc_method_handler(self.Seed),
            "Finalize": grpc.stream_stream_rpc_method_handler(self.Finalize),
        })


def serve_keyholder(keyholder: FinalizerRole, creds: Credentials, host: str, port: int, *,
                    max_message_bytes: int, workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the key holder's mTLS server; ``creds`` must be the key holder's own certificate."""
    if creds.identity != KEYHOLDER:
        raise AuthenticationError("the key holder must serve with the keyholder certificate")
    return start_server(creds, [KeyHolderService(keyholder, max_message_bytes).handler()], host, port, workers)
