"""AES-CTR pseudorandom generator: expands a 128/192/256-bit seed into uniform ring elements.

Invariant: the output is exactly the AES-CTR keystream under ``seed`` starting at counter block ``nonce``
(default all-zero), read as little-endian unsigned integers; equal seeds give equal masks on every platform.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["keystream", "expand_mask", "uniform01", "SEED_BYTES"]

SEED_BYTES = 16  # AES-128: full 128-bit seeds (never 32-bit seeds)
_ZERO_NONCE = bytes(16)


def keystream(seed: bytes, nbytes: int, nonce: bytes = _ZERO_NONCE) -> bytearray:
    """Return ``nbytes`` of AES-CTR keystream under ``seed`` (16, 24 or 32 bytes) from counter block ``nonce``."""
    if len(seed) not in (16, 24, 32):
        raise ValueError(f"seed must be 16, 24 or 32 bytes, got {len(seed)}")
    if len(nonce) != 16:
        raise ValueError("nonce (initial counter block) must be 16 bytes")
    if nbytes < 0:
        raise ValueError("nbytes must be non-negative")
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(nonce)).encryptor()
    buf = bytearray(nbytes + 15)  # update_into needs len(plaintext) + block_size - 1 bytes of room
    n = enc.update_into(bytes(nbytes), buf)
    del buf[n:]
    return buf


def expand_mask(seed: bytes, size: int, dtype: np.dtype | type = np.uint32, ring_bits: int | None = None) -> np.ndarray:
    """Expand ``seed`` to ``size`` uniform integers of unsigned ``dtype``, reduced mod 2**ring_bits if given."""
    dt = np.dtype(dtype).newbyteorder("<")
    if dt.kind != "u":
        raise ValueError(f"mask dtype must be unsigned, got {dt}")
    out = np.frombuffer(keystream(seed, size * dt.itemsize), dtype=dt)
    if ring_bits is not None and ring_bits < dt.itemsize * 8:
        out &= dt.type((1 << ring_bits) - 1)
    return out


def uniform01(size: int) -> np.ndarray:
    """``size`` independent uniform floats in [0, 1) from a fresh OS-random AES key (53-bit resolution)."""
    words = np.frombuffer(keystream(os.urandom(SEED_BYTES), size * 8), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
