"""t-of-n Shamir secret sharing of byte strings over the prime field GF(p), p = 2^31 - 1, vectorised with numpy.

A secret of ``m`` bytes (even ``m``; 16 or 32 in practice) is read as ``m/2`` little-endian 16-bit limbs, each
shared independently by a random polynomial of degree ``t-1`` whose other coefficients are uniform mod p (OS
CSPRNG, rejection sampling). All arithmetic is on int64 with every operand < 2^31, so products stay < 2^62.

Invariants: any ``t`` shares reconstruct the secret; any ``t-1`` shares are uniform and independent of it.
A reconstruction whose limbs do not all fit in 16 bits (what a wrong or corrupted share produces with
probability 1 - 2^-15 per limb) raises ``DecryptionError``. x-coordinates are distinct and in ``1..p-1``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from secagg.errors import DecryptionError, MalformedMessageError

__all__ = ["PRIME", "LIMB_BITS", "Share", "split", "reconstruct", "random_field_elements"]

PRIME = (1 << 31) - 1
LIMB_BITS = 16
_P = np.int64(PRIME)
_HEAD = struct.Struct("<IH")


@dataclass(frozen=True, eq=False)
class Share:
    """One share: the point ``x`` and the polynomial values ``y`` (one per limb, each in ``[0, p)``)."""

    x: int
    y: np.ndarray

    def __post_init__(self) -> None:
        if not 1 <= self.x < PRIME:
            raise MalformedMessageError(f"share x-coordinate {self.x} outside 1..p-1")
        if self.y.ndim != 1 or self.y.size == 0 or self.y.dtype != np.int64:
            raise MalformedMessageError("share values must be a non-empty 1-D int64 vector")
        if int(self.y.min()) < 0 or int(self.y.max()) >= PRIME:
            raise MalformedMessageError("share values must lie in [0, p)")

    def to_bytes(self) -> bytes:
        """``x:u32 | limbs:u16 | y:u32[limbs]`` little-endian."""
        return _HEAD.pack(self.x, self.y.size) + self.y.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Share":
        """Inverse of :meth:`to_bytes`; raises MalformedMessageError on any size or range violation."""
        if len(data) < _HEAD.size:
            raise MalformedMessageError(f"share of {len(data)} bytes is shorter than its header")
        x, limbs = _HEAD.unpack_from(data)
        if limbs == 0 or len(data) != _HEAD.size + 4 * limbs:
            raise MalformedMessageError(f"share header says {limbs} limbs but {len(data)} bytes were given")
        y = np.frombuffer(data, dtype="<u4", offset=_HEAD.size).astype(np.int64)
        return cls(x, y)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Share) and self.x == other.x and np.array_equal(self.y, other.y)

    __hash__ = None  # type: ignore[assignment]


def random_field_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform integers in ``[0, p)`` from the OS CSPRNG (31-bit draws, the single value p rejected)."""
    count = int(np.prod(shape))
    out = np.empty(0, dtype=np.int64)
    while out.size < count:
        need = count - out.size
        draw = (np.frombuffer(os.urandom(4 * (need + 8)), dtype="<u4") & np.uint32(PRIME)).astype(np.int64)
        out = np.concatenate([out, draw[draw != PRIME]])
    return out[:count].reshape(shape)


def _limbs(secret: bytes) -> np.ndarray:
    if len(secret) == 0 or len(secret) % 2:
        raise ValueError(f"secret must be a non-empty even number of bytes, got {len(secret)}")
    return np.frombuffer(bytes(secret), dtype="<u2").astype(np.int64)


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` at the points ``xs`` (distinct, in 1..p-1); any ``threshold`` of them reconstruct."""
    xs = [int(x) for x in xs]
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)")
    if len(set(xs)) != len(xs) or not all(1 <= x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in 1..p-1")
    limbs = _limbs(secret)
    coeffs = random_field_elements((threshold - 1, limbs.size))
    px = np.array(xs, dtype=np.int64)[:, None]
    acc = np.zeros((len(xs), limbs.size), dtype=np.int64)
    for c in coeffs[::-1]:  # Horner from the highest-degree coefficient; constant term last
        acc = (acc + c) * px % _P
    acc = (acc + limbs) % _P
    return [Share(x, acc[i]) for i, x in enumerate(xs)]


def _lagrange_at_zero(xs: list[int]) -> list[int]:
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        out.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return out


def reconstruct(shares: Iterable[Share], threshold: int, nbytes: int) -> bytes:
    """The ``nbytes``-byte secret from the first ``threshold`` of ``shares``.

    Raises DecryptionError for fewer than ``threshold`` shares, a repeated x-coordinate, shares of inconsistent
    lengths, or shares that do not interpolate to a valid secret.
    """
    shares = list(shares)
    if len(shares) < threshold or threshold < 1:
        raise DecryptionError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise DecryptionError("two shares have the same x-coordinate")
    limbs = nbytes // 2
    if nbytes % 2 or any(s.y.size != limbs for s in shares):
        raise DecryptionError(f"shares must all have {limbs} limbs for a {nbytes}-byte secret")
    use = shares[:threshold]
    acc = np.zeros(limbs, dtype=np.int64)
    for lam, s in zip(_lagrange_at_zero([s.x for s in use]), use):
        acc = (acc + np.int64(lam) * s.y) % _P
    if int(acc.max()) >= 1 << LIMB_BITS:
        raise DecryptionError("shares do not interpolate to a valid secret (wrong or corrupted share)")
    return acc.astype("<u2").tobytes()
