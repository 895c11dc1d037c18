"""Raw RLWE ciphertexts: the coefficient arrays behind TenSEAL/SEAL ciphertexts, in a compact wire form.

Why by hand: the hardened HE round (:mod:`secagg.he_round`) adds a secret uniform polynomial (a *pad*) to ``c0``
of every contribution, which no TenSEAL API does, and the untrusted aggregator should add ciphertexts without
deserializing attacker-chosen SEAL objects. SEAL stores a 2-polynomial ciphertext at the fresh level as
``2 x L x N`` residues (``L`` data primes ``q_j``, ring degree ``N``); ciphertext addition is coefficient-wise
mod ``q_j``, so numpy does it exactly.

Wire form of one ciphertext: for each prime ``j`` the ``2N`` residues of both polynomials, each in
``ceil(bits(q_j)/8)`` little-endian bytes. That is 8+5 bytes per coefficient for the default CKKS set instead of
SEAL's 16 (zstd gets about 14.3), and one byte copy to pack or unpack (a tighter bit packing saves 4% more and
costs several numpy passes per residue).

Invariants: :func:`unpack` accepts only exactly-sized input whose every residue is ``< q_j`` (anything else raises
``MalformedMessageError``); :func:`pack`/:func:`unpack` are inverse and work on all chunks of a contribution at
once; the pad of :func:`apply_pad` is exactly uniform mod each ``q_j`` (rejection sampling on AES-CTR output), so
it is a one-time pad in ``R_q``; it is added or removed in place, block by block.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from secagg.errors import ConfigurationError, MalformedMessageError
from secagg.kernels import pad_block

__all__ = ["RingLayout", "extract", "pack", "pack_into", "unpack", "add_into", "apply_pad", "to_tenseal"]

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
        """Bytes of one ciphertext on the wire: per prime, 2N residues in ``ceil(bits/8)`` bytes each."""
        return sum(2 * self.degree * _residue_bytes(b) for b in self.bits)

    def q(self) -> np.ndarray:
        """The moduli broadcastable against residues of shape (..., L, N)."""
        return np.array(self.moduli, dtype=np.uint64)[:, None]


def _residue_bytes(bits: int) -> int:
    """Bytes of one residue below a ``bits``-bit prime on the wire (``ceil(bits/8)``)."""
    return -(-bits // 8)


def pack_into(row: np.ndarray, c0: np.ndarray, c1: np.ndarray, layout: RingLayout) -> None:
    """Write one ciphertext (polynomials ``c0``, ``c1`` of shape ``(L, N)``, reduced) into ``row``
    (``packed_bytes`` uint8): per prime, the ``N`` residues of ``c0`` then those of ``c1``, ``ceil(bits/8)``
    little-endian bytes each."""
    pos, n = 0, layout.degree
    for j, b in enumerate(layout.bits):
        nb = _residue_bytes(b)
        for poly in (c0, c1):
            src = np.ascontiguousarray(poly[j], dtype="<u8").view(np.uint8).reshape(n, 8)
            np.copyto(row[pos:pos + n * nb].reshape(n, nb), src[:, :nb])
            pos += n * nb


def pack(residues: np.ndarray | list[np.ndarray], layout: RingLayout) -> list[memoryview]:
    """Wire bytes of each ciphertext of ``residues`` (shape ``(chunks, 2, L, N)``, or a list of ``(2, L, N)``
    arrays; each residue ``< q_j``), as :func:`pack_into` lays them out: read-only views of one buffer (a message
    copies them once, when encoded)."""
    if any(r.shape != layout.shape or r.dtype != np.uint64 for r in residues) or \
            (isinstance(residues, np.ndarray) and residues.ndim != 4):
        raise ValueError(f"residues must be uint64 of shape (chunks, {layout.shape})")
    out = np.empty((len(residues), layout.packed_bytes), dtype=np.uint8)
    for row, res in zip(out, residues):
        pack_into(row, res[0], res[1], layout)
    out.flags.writeable = False
    return [memoryview(row) for row in out]


def unpack(data: list[bytes] | tuple[bytes, ...], layout: RingLayout) -> np.ndarray:
    """Inverse of :func:`pack`: residues of shape ``(chunks, 2, L, N)``. A chunk of the wrong size or a residue
    ``>= q_j`` raises MalformedMessageError (sizes are checked before anything is allocated). Each chunk is copied
    once, straight from its bytes into the result."""
    if any(len(d) != layout.packed_bytes for d in data):
        bad = next(len(d) for d in data if len(d) != layout.packed_bytes)
        raise MalformedMessageError(f"ciphertext of {bad} bytes, expected {layout.packed_bytes}")
    chunks, n = len(data), layout.degree
    out = np.zeros((chunks, *layout.shape), dtype=np.uint64)
    dst = out.view(np.uint8).reshape(chunks, 2, len(layout.moduli), n, 8)
    widths = [2 * n * _residue_bytes(b) for b in layout.bits]
    starts = np.cumsum([0, *widths]).tolist()
    for k, chunk in enumerate(data):
        raw = np.frombuffer(chunk, dtype=np.uint8)
        for j, (lo, width) in enumerate(zip(starts, widths)):
            np.copyto(dst[k, :, j, :, :width // (2 * n)], raw[lo:lo + width].reshape(2, n, width // (2 * n)))
    for j, (b, q) in enumerate(zip(layout.bits, layout.moduli)):
        if chunks and int(out[:, :, j, :].max()) >= q:
            raise MalformedMessageError(f"a residue is not reduced mod the {b}-bit prime {j}")
    return out


def add_into(acc: np.ndarray, other: np.ndarray, layout: RingLayout) -> None:
    """``acc = (acc + other) mod q`` in place (both reduced; shapes ``(..., L, N)``)."""
    q = layout.q()
    acc += other  # < 2q < 2^63: no wrap
    np.minimum(acc, acc - q, out=acc)  # acc - q wraps to a huge value exactly when acc < q


_PAD_BLOCK = 1 << 15  # residues of one prime per pass: the keystream buffer and the block stay in cache
_ZEROS = bytes(8 * _PAD_BLOCK)  # the plaintext AES-CTR encrypts into the pad's keystream


def _pad_stream(key: bytes, prime: int, attempt: int, first: int) -> object:
    """AES-CTR keystream of draw ``attempt`` for ``prime``, positioned at residue ``first`` (even): residue ``i``
    is the little-endian word ``i % 2`` of counter block ``(prime, attempt, i // 2)``."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.CTR(struct.pack(">IIQ", prime, attempt, first // 2))).encryptor()


def _redraw(key: bytes, prime: int, positions: np.ndarray, bits: int, q: int) -> np.ndarray:
    """Fresh draws for the (rare) residues that were ``>= q``: attempt ``a`` reads position ``i`` of stream a."""
    out = np.empty(positions.size, dtype=np.uint64)
    mask = (1 << bits) - 1
    for k, i in enumerate(positions.tolist()):
        attempt = 1
        while True:
            block = _pad_stream(key, prime, attempt, i - i % 2).update(bytes(16))
            v = int.from_bytes(block[8 * (i % 2):8 * (i % 2) + 8], "little") & mask
            if v < q:
                out[k] = v
                break
            attempt += 1
    return out


def apply_pad(c0: np.ndarray, key: bytes, layout: RingLayout, *, subtract: bool = False, first: int = 0) -> None:
    """In place: ``c0 (+ or -)= P mod q``, ``c0`` of shape ``(chunks, L, N)`` (reduced) holding chunks
    ``first, first+1, ...`` of a contribution, where ``P`` is exactly uniform mod each ``q_j``: residue ``i`` of
    prime ``j`` (counted over all chunks) is a ``bits(q_j)``-bit draw from AES-CTR under ``key``, redrawn from the
    next stream while ``>= q_j``. The pad is made block by block in a cache-sized buffer, never whole; client and
    key holder compute the same ``P`` whatever blocks they apply it in."""
    chunks, n = c0.shape[0], layout.degree
    per = max(1, _PAD_BLOCK // n)  # chunks per pass
    buf = bytearray(8 * per * n + 15)  # update_into needs block_size - 1 spare bytes
    zeros = _ZEROS[:8 * per * n] if len(_ZEROS) >= 8 * per * n else bytes(8 * per * n)
    for j, (b, q) in enumerate(zip(layout.bits, layout.moduli)):
        for lo in range(0, chunks, per):
            hi = min(chunks, lo + per)
            count = (hi - lo) * n
            base = (first + lo) * n
            _pad_stream(key, j, 0, base).update_into(zeros[:8 * count], buf)
            block = c0[lo:hi, j, :]
            bad = pad_block(block, np.frombuffer(buf, dtype="<u8", count=count).reshape(hi - lo, n), b, q,
                            subtract=subtract)
            if bad.size:  # the draws >= q, redrawn from the next streams
                rows, cols = np.divmod(bad, n)
                p = _redraw(key, j, bad + base, b, q)
                v = block[rows, cols] + (np.uint64(q) - p if subtract else p)  # < 2q < 2^63
                block[rows, cols] = np.where(v >= np.uint64(q), v - np.uint64(q), v)


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
    """Residues (shape ``(2, L, N)``, a read-only view) of the one fresh-level ciphertext in a serialized TenSEAL
    vector."""
    blob = _seal_blob(memoryview(serialized))
    if len(blob) < _SEAL_HEADER.size:
        raise MalformedMessageError("SEAL blob shorter than its header")
    magic, head, _, _, mode, _, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or head != _SEAL_HEADER.size or size != len(blob) or mode not in _COMPRESSION:
        raise MalformedMessageError("not a SEAL object")
    body = bytes(blob[head:])
    expect = _CT_HEAD.size + 16 + 8 + 8 * 2 * len(layout.moduli) * layout.degree
    try:
        if mode == 2:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=expect)  # one per call: thread-safe
        elif mode == 1:
            body = zlib.decompressobj().decompress(body, expect)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise MalformedMessageError(f"SEAL ciphertext does not decompress: {exc}") from exc
    if len(body) != expect:
        raise MalformedMessageError(f"SEAL ciphertext of {len(body)} bytes, expected {expect}")
    _, ntt, polys, n, primes, _, _ = _CT_HEAD.unpack_from(body)
    if (polys, n, primes, bool(ntt)) != (2, layout.degree, len(layout.moduli), layout.ntt):
        raise MalformedMessageError("ciphertext is not a fresh 2-polynomial ciphertext of this ring")
    return np.frombuffer(body, dtype="<u8", offset=expect - 8 * 2 * primes * n).reshape(layout.shape)


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
