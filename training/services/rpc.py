"""Shared gRPC plumbing: mutually authenticated servers and channels, bytes-only handlers, and a typed stub.

Handlers are generic (``grpc.method_handlers_generic_handler``, no generated code): requests and responses are
raw ``bytes`` chunks of one :mod:`~training.services.wire` envelope. :func:`guarded` turns every ``SecAggError``
a handler raises into a logged rejection (also reported to the service's ``on_refusal(error)`` hook, if it has
one) and a gRPC status, and any other exception into ``INTERNAL`` without taking the server down.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from secagg.errors import AuthenticationError, SecAggError
from training.services.pki.certs import Credentials, parse_identity, role_name
from training.services.wire import abort, channel_options, join, raise_rpc_error, server_options, split

__all__ = ["guarded", "start_server", "Stub", "open_channel", "peer_identity"]

log = logging.getLogger("training.services")



def peer_identity(context: grpc.ServicerContext) -> int:
    """The role address of the authenticated peer of an RPC (from its verified certificate's common name)."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    if len(names) != 1:
        raise AuthenticationError("peer presented no verified client certificate")
    return parse_identity(names[0].decode("utf-8", "replace"))

def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler ``fn(request, context)``: named errors become statuses; nothing escapes as a crash."""

    @functools.wraps(fn)
    def handler(*args: Any) -> Any:
        context: grpc.ServicerContext = args[-1]
        try:
            return fn(*args)
        except SecAggError as exc:
            _refused(fn.__name__, args, exc)
            abort(context, exc)
        except grpc.RpcError:
            raise
        except Exception as exc:  # never let a bad request take the service down
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return handler


def guarded_stream(fn: Callable[..., Iterator[bytes]]) -> Callable[..., Iterator[bytes]]:
    """Like :func:`guarded` for handlers that yield response chunks."""

    @functools.wraps(fn)
    def handler(*args: Any) -> Iterator[bytes]:
        context: grpc.ServicerContext = args[-1]
        try:
            yield from fn(*args)
        except SecAggError as exc:
            _refused(fn.__name__, args, exc)
            abort(context, exc)
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return handler


def _refused(method: str, args: tuple, exc: SecAggError) -> None:
    context: grpc.ServicerContext = args[-1]
    try:
        who = role_name(peer_identity(context))
    except (SecAggError, ValueError):
        who = context.peer()
    log.warning("%s refused for %s: %s: %s", method, who, type(exc).__name__, exc)
    hook = getattr(args[0], "on_refusal", None) if len(args) > 2 else None
    if hook is not None:
        hook(exc)


def start_server(creds: Credentials, handlers: list[grpc.GenericRpcHandler], host: str, port: int,
                 workers: int) -> tuple[grpc.Server, int]:
    """Start an mTLS server (client certificates required) and return it with its bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=handlers,
                         options=server_options())
    bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(creds.key, creds.cert)], root_certificates=creds.ca,
                                                                         require_client_auth=True))
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    return server, bound


def open_channel(creds: Credentials, address: str, server_identity: int) -> grpc.Channel:
    """A channel that presents ``creds`` and accepts only a server certified as ``server_identity``."""
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(
        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert), options=channel_options(role_name(server_identity)))


class Stub:
    """Calls ``/<service>/<method>`` with one envelope each way; failures raise the named secagg error."""

    def __init__(self, channel: grpc.Channel, service: str, limit: int) -> None:
        self.channel, self.service, self.limit = channel, service, limit

    def _path(self, method: str) -> str:
        return f"/{self.service}/{method}"

    def unary_stream(self, method: str, envelope: bytes, timeout: float) -> bytes:
        try:
            return join(self.channel.unary_stream(self._path(method))(envelope, timeout=timeout), self.limit)
        except grpc.RpcError as err:
            raise_rpc_error(err)

    def stream_unary(self, method: str, envelope: bytes, timeout: float) -> bytes:
        try:
            return self.channel.stream_unary(self._path(method))(split(envelope), timeout=timeout)
        except grpc.RpcError as err:
            raise_rpc_error(err)

    def stream_stream(self, method: str, envelope: bytes, timeout: float) -> bytes:
        try:
            return join(self.channel.stream_stream(self._path(method))(split(envelope), timeout=timeout),
                        self.limit)
        except grpc.RpcError as err:
            raise_rpc_error(err)
