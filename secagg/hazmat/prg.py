"""AES-CTR pseudorandom generator: expands a 128/192/256-bit seed into uniform ring elements.

Invariant: the output is exactly the AES-CTR keystream under ``seed`` starting at counter block ``nonce``
(default all-zero), read as little-endian unsigned integers; equal seeds give equal masks on every platform.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["keystream", "expand_mask", "U32Stream", "SEED_BYTES"]

SEED_BYTES = 16  # AES-128: full 128-bit seeds (never 32-bit seeds)
_ZERO_NONCE = bytes(16)
_BLOCK = 1 << 18  # bytes of keystream per seed per step of add_masks (cache-sized)
_zeros = b""  # shared read-only plaintext of zeros, grown on demand (encrypting zeros yields the keystream)


def _zero_view(nbytes: int) -> memoryview:
    global _zeros
    if len(_zeros) < nbytes:
        _zeros = bytes(max(nbytes, 2 * len(_zeros)))
    return memoryview(_zeros)[:nbytes]


def keystream(seed: bytes, nbytes: int, nonce: bytes = _ZERO_NONCE) -> bytes:
    """Return ``nbytes`` of AES-CTR keystream under ``seed`` (16, 24 or 32 bytes) from counter block ``nonce``."""
    if len(seed) not in (16, 24, 32):
        raise ValueError(f"seed must be 16, 24 or 32 bytes, got {len(seed)}")
    if len(nonce) != 16:
        raise ValueError("nonce (initial counter block) must be 16 bytes")
    if nbytes < 0:
        raise ValueError("nbytes must be non-negative")
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(nonce))).encryptor()
    return enc.update(_zero_view(nbytes))


def expand_mask(seed: bytes, size: int, dtype: np.dtype | type = np.uint32, ring_bits: int | None = None) -> np.ndarray:
    """Expand ``seed`` to ``size`` uniform integers of unsigned ``dtype`` (read-only), mod 2**ring_bits if given."""
    dt = np.dtype(dtype).newbyteorder("<")
    if dt.kind != "u":
        raise ValueError(f"mask dtype must be unsigned, got {dt}")
    out = np.frombuffer(keystream(seed, size * dt.itemsize), dtype=dt)
    if ring_bits is not None and ring_bits < dt.itemsize * 8:
        out = out & dt.type((1 << ring_bits) - 1)
    return out


class U32Stream:
    """Uniform uint32 words from one fresh OS-random AES-128-CTR key, written block by block into a reused buffer
    (for callers that consume randomness in cache-sized pieces)."""

    def __init__(self, block: int) -> None:
        self._enc = Cipher(algorithms.AES(os.urandom(SEED_BYTES)), modes.CTR(_ZERO_NONCE)).encryptor()
        self._buf = bytearray(4 * block + 15)  # update_into needs block_size - 1 spare bytes
        self._words = np.frombuffer(self._buf, dtype="<u4", count=block)

    def next(self, count: int) -> np.ndarray:
        """The next ``count`` (<= block) words; the view is overwritten by the following call."""
        self._enc.update_into(_zero_view(4 * count), self._buf)
        return self._words[:count]


def add_masks(acc: np.ndarray, plus: Iterable[bytes] = (), minus: Iterable[bytes] = (), *, first: int = 0) -> None:
    """In place: ``acc += Σ expand_mask(s) for s in plus − Σ expand_mask(s) for s in minus`` (mod 2^bits of dtype),
    where ``acc`` holds values ``first, first + 1, ...`` of the masked vector (``first * itemsize`` a multiple of
    16: the AES-CTR counter starts at that block, so parts masked apart equal the whole masked at once).

    Same values as :func:`expand_mask` with ``acc``'s dtype, computed block by block so every block of ``acc``
    stays in cache while all streams are added to it. Reduce mod 2**ring_bits afterwards for narrower rings.
    """
    if acc.ndim != 1 or acc.dtype.kind != "u" or not acc.flags.c_contiguous or acc.dtype.byteorder == ">":
        raise ValueError("acc must be a contiguous 1-D little-endian unsigned array")
    if first < 0 or (first * acc.dtype.itemsize) % 16:
        raise ValueError(f"a part must start at a 16-byte boundary of the mask, not at value {first}")
    nonce = (first * acc.dtype.itemsize // 16).to_bytes(16, "big")
    streams = [(Cipher(algorithms.AES(bytes(s)), modes.CTR(nonce)).encryptor(), np.add) for s in plus]
    streams += [(Cipher(algorithms.AES(bytes(s)), modes.CTR(nonce)).encryptor(), np.subtract) for s in minus]
    if not streams:
        return
    size = acc.dtype.itemsize
    zeros = _zero_view(_BLOCK)
    buf = bytearray(_BLOCK + 15)  # update_into needs block_size - 1 spare bytes
    block = np.frombuffer(buf, dtype=acc.dtype, count=_BLOCK // size)
    per = _BLOCK // size
    for start in range(0, acc.size, per):
        part = acc[start:start + per]
        nbytes = part.size * size
        src, ks = zeros[:nbytes], block[:part.size]  # one AES pass per stream, added while the block is in L2
        for enc, op in streams:
            enc.update_into(src, buf)
            op(part, ks, out=part)

