"""Raw RLWE ciphertexts: the coefficient arrays behind TenSEAL/SEAL ciphertexts, in a compact wire form.

Why by hand: the hardened HE round (:mod:`secagg.he_round`) adds a secret uniform polynomial (a *pad*) to ``c0``
of every contribution, which no TenSEAL API does, and the untrusted aggregator should add ciphertexts without
deserializing attacker-chosen SEAL objects. SEAL stores a 2-polynomial ciphertext at the fresh level as
``2 x L x N`` residues (``L`` data primes ``q_j``, ring degree ``N``); ciphertext addition is coefficient-wise
mod ``q_j``, so numpy does it exactly.

Wire form of one ciphertext: for each prime ``j`` the ``2N`` residues of both polynomials, each in
``bits(q_j)`` bits, little-endian bit-packed (``2N * bits(q_j) / 8`` bytes). That is 60+40 bits per coefficient
pair for the default CKKS set instead of SEAL's 128 (zstd gets about 115).

Invariants: :func:`unpack` accepts only exactly-sized input whose every residue is ``< q_j`` (anything else raises
``MalformedMessageError``); :func:`pack`/:func:`unpack` are inverse; :func:`uniform` is exactly uniform mod each
``q_j`` (rejection sampling on AES-CTR output), so a pad is a one-time pad in ``R_q``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from secagg.errors import ConfigurationError, MalformedMessageError
from secagg.hazmat.prg import keystream

__all__ = ["RingLayout", "extract", "pack", "unpack", "add_into", "sub_into", "uniform", "to_tenseal"]

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compression, reserved, size
_CT_HEAD = struct.Struct("<32sBQQQdQ")  # parms_id, ntt flag, size, N, L, scale, correction factor
_COMPRESSION = {0: "none", 1: "zlib", 2: "zstd"}


@dataclass(frozen=True)
class RingLayout:
    """The fresh-level ring of a session: degree ``N``, data primes (in SEAL's order), NTT form or not."""

    degree: int
    moduli: tuple[int, ...]
    ntt: bool

    def __post_init__(self) -> None:
        if self.degree < 16 or self.degree & (self.degree - 1):
            raise ConfigurationError(f"ring degree must be a power of two >= 16, got {self.degree}")
        if not self.moduli or any(not 2 <= q < 1 << 62 for q in self.moduli):
            raise ConfigurationError("moduli must be 1..L primes below 2^62")

    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(q.bit_length() for q in self.moduli)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one ciphertext's residues: (2 polynomials, L primes, N coefficients)."""
        return 2, len(self.moduli), self.degree

    @property
    def packed_bytes(self) -> int:
        """Bytes of one ciphertext on the wire."""
        return sum(2 * self.degree * b // 8 for b in self.bits)

    def q(self) -> np.ndarray:
        """The moduli broadcastable against residues of shape (..., L, N)."""
        return np.array(self.moduli, dtype=np.uint64)[:, None]


def _groups(bits: int) -> tuple[int, int]:
    """(values per group, 64-bit words per group) of a packing at ``bits`` bits per value."""
    g = 64 // math.gcd(bits, 64)
    return g, g * bits // 64


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    g, words = _groups(bits)
    v = values.reshape(-1, g)
    out = np.zeros((v.shape[0], words), dtype=np.uint64)
    for i in range(g):
        w, s = divmod(i * bits, 64)
        out[:, w] |= v[:, i] << np.uint64(s)
        if s + bits > 64:
            out[:, w + 1] |= v[:, i] >> np.uint64(64 - s)
    return out


def _unpack_bits(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    g, per = _groups(bits)
    w = words.reshape(-1, per)
    out = np.empty((w.shape[0], g), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    for i in range(g):
        k, s = divmod(i * bits, 64)
        col = w[:, k] >> np.uint64(s)
        if s + bits > 64:
            col |= w[:, k + 1] << np.uint64(64 - s)
        out[:, i] = col & mask
    return out.reshape(count)


def pack(residues: np.ndarray, layout: RingLayout) -> bytes:
    """Wire bytes of one ciphertext's ``residues`` (shape ``(2, L, N)``, each ``< q_j``)."""
    if residues.shape != layout.shape:
        raise ValueError(f"residues must have shape {layout.shape}, got {residues.shape}")
    return b"".join(_pack_bits(np.ascontiguousarray(residues[:, j, :]).reshape(-1), b).tobytes()
                    for j, b in enumerate(layout.bits))


def unpack(data: bytes, layout: RingLayout) -> np.ndarray:
    """Inverse of :func:`pack`: residues of shape ``(2, L, N)``. A wrong size or a residue ``>= q_j`` raises
    MalformedMessageError (the size is checked before anything is allocated)."""
    if len(data) != layout.packed_bytes:
        raise MalformedMessageError(f"ciphertext of {len(data)} bytes, expected {layout.packed_bytes}")
    out = np.empty(layout.shape, dtype=np.uint64)
    view, pos, count = memoryview(data), 0, 2 * layout.degree
    for j, (b, q) in enumerate(zip(layout.bits, layout.moduli)):
        nbytes = count * b // 8
        vals = _unpack_bits(np.frombuffer(view[pos:pos + nbytes], dtype="<u8"), b, count)
        if int(vals.max()) >= q:
            raise MalformedMessageError(f"a residue is not reduced mod the {b}-bit prime {j}")
        out[:, j, :] = vals.reshape(2, layout.degree)
        pos += nbytes
    return out


def add_into(acc: np.ndarray, other: np.ndarray, layout: RingLayout) -> None:
    """``acc = (acc + other) mod q`` in place (both reduced; shapes ``(..., L, N)``)."""
    q = layout.q()
    acc += other  # < 2q < 2^63: no wrap
    np.subtract(acc, q, out=acc, where=acc >= q)


def sub_into(acc: np.ndarray, other: np.ndarray, layout: RingLayout) -> None:
    """``acc = (acc - other) mod q`` in place (both reduced)."""
    q = layout.q()
    acc += q - other
    np.subtract(acc, q, out=acc, where=acc >= q)


def uniform(key: bytes, layout: RingLayout, chunks: int) -> np.ndarray:
    """``chunks`` polynomials (shape ``(chunks, L, N)``) exactly uniform mod each ``q_j``, from AES-CTR under
    ``key``: each residue is a ``bits(q_j)``-bit draw, redrawn while ``>= q_j`` (SEAL's primes lie just below a
    power of two, so redraws are rare)."""
    out = np.empty((chunks, len(layout.moduli), layout.degree), dtype=np.uint64)
    need = chunks * layout.degree
    for j, (b, q) in enumerate(zip(layout.bits, layout.moduli)):
        got = np.empty(0, dtype=np.uint64)
        mask = np.uint64((1 << b) - 1)
        attempt = 0
        while got.size < need:
            extra = need - got.size
            draw = extra + extra // 64 + 64
            # (prime, attempt) in the counter block's high half: the streams never overlap
            raw = np.frombuffer(keystream(key, 8 * draw, struct.pack(">IIQ", j, attempt, 0)), dtype="<u8") & mask
            attempt += 1
            got = np.concatenate([got, raw[raw < np.uint64(q)]])
        out[:, j, :] = got[:need].reshape(chunks, layout.degree)
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedMessageError("truncated varint in a serialized vector")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _seal_blob(data: memoryview) -> memoryview:
    """The SEAL ciphertext inside a serialized one-ciphertext TenSEAL vector (protobuf fields 1, 2, optional 3)."""
    pos = 0
    blob = None
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _read_varint(data, pos)
            if field == 2:
                if blob is not None:
                    raise MalformedMessageError("serialized vector holds more than one ciphertext")
                blob = data[pos:pos + n]
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 0:
            _, pos = _read_varint(data, pos)
        else:
            raise MalformedMessageError(f"unexpected protobuf wire type {wire}")
    if blob is None or pos != len(data):
        raise MalformedMessageError("serialized vector has no ciphertext")
    return blob


def extract(serialized: bytes, layout: RingLayout) -> np.ndarray:
    """Residues (shape ``(2, L, N)``) of the one fresh-level ciphertext in a serialized TenSEAL vector."""
    blob = _seal_blob(memoryview(serialized))
    if len(blob) < _SEAL_HEADER.size:
        raise MalformedMessageError("SEAL blob shorter than its header")
    magic, head, _, _, mode, _, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or head != _SEAL_HEADER.size or size != len(blob) or mode not in _COMPRESSION:
        raise MalformedMessageError("not a SEAL object")
    body = bytes(blob[head:])
    expect = _CT_HEAD.size + 16 + 8 + 8 * 2 * len(layout.moduli) * layout.degree
    if mode == 2:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=expect)
    elif mode == 1:
        import zlib

        body = zlib.decompress(body)
    if len(body) != expect:
        raise MalformedMessageError(f"SEAL ciphertext of {len(body)} bytes, expected {expect}")
    _, ntt, polys, n, primes, _, _ = _CT_HEAD.unpack_from(body)
    if (polys, n, primes, bool(ntt)) != (2, layout.degree, len(layout.moduli), layout.ntt):
        raise MalformedMessageError("ciphertext is not a fresh 2-polynomial ciphertext of this ring")
    out = np.frombuffer(body, dtype="<u8", offset=expect - 8 * 2 * primes * n).reshape(layout.shape)
    return out.astype(np.uint64)


def to_tenseal(residues: np.ndarray, layout: RingLayout, *, parms_id: list[int], scale: float | None,
               length: int) -> bytes:
    """A serialized one-ciphertext TenSEAL vector (uncompressed SEAL blob) holding ``residues`` (shape
    ``(2, L, N)``) at ``parms_id``: ``scale`` for CKKS (written as protobuf field 3), None for BFV."""
    data = np.ascontiguousarray(residues, dtype="<u8").tobytes()
    dyn = struct.pack("<Q", residues.size) + data
    dyn = _SEAL_HEADER.pack(_SEAL_MAGIC, _SEAL_HEADER.size, 4, 3, 0, 0, _SEAL_HEADER.size + len(dyn)) + dyn
    head = _CT_HEAD.pack(struct.pack("<4Q", *parms_id), int(layout.ntt), 2, layout.degree, len(layout.moduli),
                         1.0 if scale is None else float(scale), 1)
    body = head + dyn
    blob = _SEAL_HEADER.pack(_SEAL_MAGIC, _SEAL_HEADER.size, 4, 3, 0, 0, _SEAL_HEADER.size + len(body)) + body
    sizes = _varint(length)
    out = b"\x0a" + _varint(len(sizes)) + sizes + b"\x12" + _varint(len(blob)) + blob
    if scale is not None:
        out += b"\x19" + struct.pack("<d", float(scale))
    return out
