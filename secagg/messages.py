"""Versioned, validating bytes encoding for protocol messages.

Every message is a frozen dataclass declared with :func:`message` and a unique one-byte tag. The wire form is::

    b"SA" | version:u8 | tag:u8 | body_len:u32 | body | crc32:u32      (little-endian)

The body is the fields in declaration order, each encoded by its annotated type (see ``_KINDS``). Decoding
checks magic, version, tag, every length against the bytes that remain, canonical ordering of maps, that no
bytes trail, and the CRC-32 over everything before it (which detects every single-bit flip and every burst of up
to 32 bits). The CRC guards against corruption only; authenticity comes from AEAD, signatures and mutual TLS.
After decoding, the class's ``validate()`` checks semantics. Any failure raises ``MalformedMessageError``.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from typing import Any, ClassVar, TypeVar

import numpy as np
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, bit for bit, ~19x faster (SIMD): 0.08 ms per 4 MB

from secagg.errors import MalformedMessageError

__all__ = ["Message", "message", "decode", "WIRE_VERSION", "MAX_MESSAGE_BYTES"]

MAGIC = b"SA"
WIRE_VERSION = 2
MAX_MESSAGE_BYTES = 1 << 31
_HEADER = struct.Struct("<2sBBI")
_CRC = struct.Struct("<I")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")

# Array dtypes allowed on the wire; the code is part of the encoding and must never be renumbered.
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u2"), 2: np.dtype("<u4"), 3: np.dtype("<u8"),
    4: np.dtype("<f4"), 5: np.dtype("<f8"), 6: np.dtype("u1"), 7: np.dtype("<i8"),
}
_DTYPE_CODES = {dt: code for code, dt in _DTYPES.items()}

_REGISTRY: dict[int, type["Message"]] = {}
M = TypeVar("M", bound="Message")


class _Reader:
    """Cursor over a body that raises MalformedMessageError instead of reading past the end."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedMessageError(f"truncated: need {n} bytes at offset {self.pos} of {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def i64(self) -> int:
        return _I64.unpack(self.take(8))[0]

    def count(self, elem_size: int) -> int:
        n = self.u32()
        if n * elem_size > len(self.data) - self.pos:
            raise MalformedMessageError(f"count {n} exceeds the remaining {len(self.data) - self.pos} bytes")
        return n


def _enc_int(v: int) -> bytes:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise MalformedMessageError(f"expected int, got {type(v).__name__}")
    return _I64.pack(int(v))


def _enc_bytes(v: bytes | bytearray | memoryview) -> tuple[bytes, bytes | bytearray | memoryview]:
    """(length prefix, the bytes themselves): parts that ``to_bytes`` joins once, so a large field (a ciphertext,
    or a view of a packed buffer) is copied exactly once into the message."""
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise MalformedMessageError(f"expected bytes, got {type(v).__name__}")
    return _U32.pack(v.nbytes if isinstance(v, memoryview) else len(v)), v


def _enc_bytes_tuple(v: tuple) -> tuple:
    if not isinstance(v, tuple):
        raise MalformedMessageError("expected a tuple of bytes")
    return (_U32.pack(len(v)), *(p for x in v for p in _enc_bytes(x)))


def _enc_array(v: np.ndarray) -> tuple[bytes, memoryview]:
    if not isinstance(v, np.ndarray) or v.ndim != 1:
        raise MalformedMessageError("expected a 1-D numpy array")
    dt = v.dtype.newbyteorder("<") if v.dtype.byteorder == ">" else v.dtype
    code = _DTYPE_CODES.get(np.dtype(dt))
    if code is None:
        raise MalformedMessageError(f"dtype {v.dtype} is not allowed on the wire")
    data = np.ascontiguousarray(v, dtype=_DTYPES[code])  # no copy when already contiguous little-endian
    return bytes([code]) + _U32.pack(v.size), memoryview(data).cast("B")  # parts: joined once by to_bytes


def _dec_array(r: _Reader) -> np.ndarray:
    code = r.take(1)[0]
    if code not in _DTYPES:
        raise MalformedMessageError(f"unknown array dtype code {code}")
    dt = _DTYPES[code]
    n = r.count(dt.itemsize)
    return np.frombuffer(r.take(n * dt.itemsize), dtype=dt)


def _dec_int_tuple(r: _Reader) -> tuple[int, ...]:
    return tuple(r.i64() for _ in range(r.count(8)))


def _dec_bytes_tuple(r: _Reader) -> tuple[bytes, ...]:
    return tuple(bytes(r.take(r.count(1))) for _ in range(r.count(4)))


def _enc_bytes_map(v: dict) -> tuple:
    if not isinstance(v, dict):
        raise MalformedMessageError("expected dict[int, bytes]")
    keys = sorted(int(k) for k in v)
    return (_U32.pack(len(keys)), *(p for k in keys for p in (_enc_int(k), *_enc_bytes(v[k]))))


def _dec_bytes_map(r: _Reader) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    prev = None
    for _ in range(r.count(12)):
        k = r.i64()
        if prev is not None and k <= prev:
            raise MalformedMessageError("map keys are not strictly increasing")
        prev = k
        out[k] = bytes(r.take(r.count(1)))
    return out


def _dec_bool(r: _Reader) -> bool:
    b = r.take(1)[0]
    if b > 1:
        raise MalformedMessageError(f"bool byte {b} is neither 0 nor 1")
    return bool(b)


def _dec_str(r: _Reader) -> str:
    try:
        return bytes(r.take(r.count(1))).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessageError("string is not UTF-8") from exc


# annotation -> (encoder, decoder)
_KINDS: dict[Any, tuple[Any, Any]] = {
    int: (_enc_int, lambda r: r.i64()),
    float: (lambda v: _F64.pack(float(v)), lambda r: _F64.unpack(r.take(8))[0]),
    bool: (lambda v: bytes([1 if v else 0]), _dec_bool),
    str: (lambda v: _enc_bytes(v.encode("utf-8")), _dec_str),
    bytes: (_enc_bytes, lambda r: bytes(r.take(r.count(1)))),
    np.ndarray: (_enc_array, _dec_array),
    tuple[int, ...]: (lambda v: _U32.pack(len(v)) + b"".join(_enc_int(x) for x in v), _dec_int_tuple),
    tuple[bytes, ...]: (_enc_bytes_tuple, _dec_bytes_tuple),
    dict[int, bytes]: (_enc_bytes_map, _dec_bytes_map),
}


class Message:
    """Base of all protocol messages. Subclasses are declared with :func:`message`."""

    TAG: ClassVar[int]
    _codec: ClassVar[tuple[tuple[str, Any, Any], ...]]

    def validate(self) -> None:
        """Semantic checks beyond the wire format; raise MalformedMessageError. Override in subclasses."""

    def __post_init__(self) -> None:
        self.validate()

    def to_bytes(self) -> bytes:
        parts: list[bytes | memoryview] = []
        for name, enc, _ in self._codec:
            part = enc(getattr(self, name))
            parts.extend(part) if isinstance(part, tuple) else parts.append(part)
        head = _HEADER.pack(MAGIC, WIRE_VERSION, self.TAG, sum(len(p) for p in parts))
        crc = crc32(head)
        for p in parts:
            crc = crc32(p, crc)
        return b"".join([head, *parts, _CRC.pack(crc)])  # the one copy of large arrays

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        """Decode ``data`` as exactly this message type (any other type raises MalformedMessageError)."""
        msg = decode(data)
        if not isinstance(msg, cls):
            raise MalformedMessageError(f"expected {cls.__name__}, got {type(msg).__name__}")
        return msg

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                        and a.dtype == b.dtype and np.array_equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


def message(tag: int):
    """Class decorator: make a frozen dataclass message with wire tag ``tag`` (unique across secagg)."""

    def wrap(cls: type[M]) -> type[M]:
        if not 0 < tag < 256:
            raise ValueError(f"tag {tag} out of range")
        if tag in _REGISTRY:
            raise ValueError(f"tag {tag} already used by {_REGISTRY[tag].__name__}")
        dc = dataclasses.dataclass(frozen=True, eq=False)(cls)
        hints = typing.get_type_hints(dc)
        codec = []
        for f in dataclasses.fields(dc):
            kind = _KINDS.get(hints[f.name])
            if kind is None:
                raise TypeError(f"{cls.__name__}.{f.name}: type {hints[f.name]} has no wire encoding")
            codec.append((f.name, kind[0], kind[1]))
        dc.TAG, dc._codec = tag, tuple(codec)
        _REGISTRY[tag] = dc
        return dc

    return wrap


def decode(data: bytes) -> Message:
    """Decode any registered message from bytes, validating format, checksum and semantics."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessageError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < _HEADER.size + _CRC.size:
        raise MalformedMessageError(f"message of {len(view)} bytes is shorter than a header")
    if len(view) > MAX_MESSAGE_BYTES:
        raise MalformedMessageError(f"message of {len(view)} bytes exceeds {MAX_MESSAGE_BYTES}")
    magic, version, tag, body_len = _HEADER.unpack(view[:_HEADER.size])
    if magic != MAGIC:
        raise MalformedMessageError("bad magic: not a secagg message")
    if version != WIRE_VERSION:
        raise MalformedMessageError(f"wire version {version} is not supported (this is {WIRE_VERSION})")
    if _HEADER.size + body_len + _CRC.size != len(view):
        raise MalformedMessageError(f"length mismatch: header says {body_len} body bytes, got {len(view)} total")
    (crc,) = _CRC.unpack(view[-_CRC.size:])
    if crc32(view[:-_CRC.size]) != crc:
        raise MalformedMessageError("checksum mismatch: message corrupted")
    cls = _REGISTRY.get(tag)
    if cls is None:
        raise MalformedMessageError(f"unknown message tag {tag}")
    reader = _Reader(view[_HEADER.size:-_CRC.size])
    values = {name: dec(reader) for name, _, dec in cls._codec}
    if reader.pos != len(reader.data):
        raise MalformedMessageError(f"{len(reader.data) - reader.pos} trailing bytes in {cls.__name__}")
    try:
        return cls(**values)
    except MalformedMessageError:
        raise
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"invalid {cls.__name__}: {exc}") from exc
