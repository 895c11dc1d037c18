"""Framing for the gRPC transport: 1 MiB chunks, a small JSON-headed envelope, and errors as gRPC statuses.

Every RPC carries exactly one envelope in each direction, split into chunks of at most :data:`CHUNK` bytes so
no single gRPC message approaches the 4 MB default cap (servers and channels refuse any message larger than
:data:`MAX_GRPC_MESSAGE`). An envelope is ``b"ST" | header_len:u32 | header (UTF-8 JSON object) | body``.
Reassembly stops as soon as the running total passes the receiver's limit, so an oversized stream costs the
receiver at most one chunk beyond the limit.

A ``secagg.errors.SecAggError`` crosses the wire as a status whose details are ``"<ErrorName>: <message>"``;
:func:`raise_rpc_error` turns it back into the same named exception on the caller's side.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import grpc

from secagg import errors as E
from training.engine.codec import field, model_bytes, model_from
from training.engine.keyholder import StaleKeyError
from training.engine.roles import context_id

__all__ = ["CHUNK", "MAX_GRPC_MESSAGE", "OversizeMessageError", "StaleKeyError", "TransportError", "split",
           "join", "pack", "unpack", "field", "status_code", "abort", "raise_rpc_error", "channel_options",
           "server_options", "context_id", "model_bytes", "model_from"]

CHUNK = 1 << 20
MAX_GRPC_MESSAGE = CHUNK + (64 << 10)
MAX_HEADER = 1 << 20   # a task header names the cohort's signing certificates (about 70 bytes per client)
_MAGIC = b"ST"
_LEN = struct.Struct("<I")


class OversizeMessageError(E.MalformedMessageError):
    """A streamed message grew past the receiver's size limit."""


class TransportError(E.SecAggError):
    """The transport failed (peer unreachable, handshake refused, or a status without a secagg error name)."""


def channel_options(server_role: str) -> list[tuple[str, Any]]:
    """Channel options: verify the server as ``server_role`` and cap message sizes at one chunk."""
    return [("grpc.ssl_target_name_override", server_role), ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE)]


def server_options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE), ("grpc.so_reuseport", 0)]


def split(data: bytes | tuple[bytes, ...]) -> Iterator[bytes]:
    """Yield ``data`` in chunks of at most :data:`CHUNK` bytes (one empty chunk for empty data); a tuple of pieces
    is streamed as their concatenation without making it (a task's header, then the model every member shares)."""
    pieces = data if isinstance(data, tuple) else (data,)
    sent = False
    for piece in pieces:
        view = memoryview(piece)
        for i in range(0, len(view), CHUNK):
            sent = True
            yield bytes(view[i:i + CHUNK])
    if not sent:
        yield b""


def join(chunks: Iterable[bytes], limit: int) -> bytes:
    """Concatenate streamed chunks; raise OversizeMessageError once more than ``limit`` bytes arrived."""
    parts: list[bytes] = []
    total = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes) or len(chunk) > CHUNK:
            raise E.MalformedMessageError("stream chunk is not bytes of at most 1 MiB")
        total += len(chunk)
        if total > limit:
            raise OversizeMessageError(f"message exceeds the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    """Encode an envelope: a JSON object header (at most :data:`MAX_HEADER` bytes) and an opaque body."""
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(head) > MAX_HEADER:
        raise E.MalformedMessageError(f"envelope header exceeds {MAX_HEADER} bytes")
    return _MAGIC + _LEN.pack(len(head)) + head + bytes(body)


def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Decode an envelope; anything but a well-formed one raises MalformedMessageError."""
    if len(data) < 6 or data[:2] != _MAGIC:
        raise E.MalformedMessageError("not a transport envelope")
    (n,) = _LEN.unpack_from(data, 2)
    if n > MAX_HEADER or 6 + n > len(data):
        raise E.MalformedMessageError("envelope header length is out of bounds")
    try:
        header = json.loads(data[6:6 + n].decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise E.MalformedMessageError(f"envelope header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise E.MalformedMessageError("envelope header is not a JSON object")
    return header, data[6 + n:]


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


# Most specific first: the first matching class decides the status code.
_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (E.AuthenticationError, grpc.StatusCode.PERMISSION_DENIED),
    (E.KeyMisuseError, grpc.StatusCode.PERMISSION_DENIED),
    (E.UnknownClientError, grpc.StatusCode.PERMISSION_DENIED),
    (E.WrongRoundError, grpc.StatusCode.FAILED_PRECONDITION),
    (E.DuplicateMessageError, grpc.StatusCode.ALREADY_EXISTS),
    (OversizeMessageError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (E.StageError, grpc.StatusCode.FAILED_PRECONDITION),
    (E.TooFewContributorsError, grpc.StatusCode.FAILED_PRECONDITION),
    (E.DropoutError, grpc.StatusCode.ABORTED),
    (StaleKeyError, grpc.StatusCode.FAILED_PRECONDITION),
    (E.SecAggError, grpc.StatusCode.INVALID_ARGUMENT),
]
_BY_NAME: dict[str, type[E.SecAggError]] = {
    name: getattr(E, name) for name in E.__all__} | {"OversizeMessageError": OversizeMessageError,
                                                      "StaleKeyError": StaleKeyError,
                                                      "TransportError": TransportError}


def status_code(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: E.SecAggError) -> NoReturn:
    """End the RPC with the status for ``exc`` and details ``"<ErrorName>: <message>"`` (raises)."""
    context.abort(status_code(exc), f"{type(exc).__name__}: {exc}"[:2000])
    raise AssertionError("unreachable")  # context.abort always raises


def raise_rpc_error(err: grpc.RpcError) -> NoReturn:
    """Re-raise a failed call as the named secagg error it carries, else as TransportError."""
    details = (err.details() or "") if hasattr(err, "details") else ""
    code = err.code() if hasattr(err, "code") else None
    name, _, message = details.partition(": ")
    cls = _BY_NAME.get(name)
    if cls is not None:
        exc = cls(message)
    else:
        exc = TransportError(f"{getattr(code, 'name', code)}: {details}")
    exc.code = code  # type: ignore[attr-defined]
    raise exc from err
