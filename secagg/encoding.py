"""Update validation, flatten/unflatten, and fixed-point encoding into the ring Z_{2^k}.

Fixed-point invariant: with ``n_clients`` contributions each encoded from values in ``[-clip, clip]``, every
encoded integer has magnitude at most ``max_level = floor((2^(k-1) - 1) / n_clients)``, so the signed sum of all
n contributions stays inside ``(-2^(k-1), 2^(k-1))`` and decodes exactly: the sum never wraps. The configuration
is refused (``ConfigurationError``) when fewer than ``min_precision_bits`` bits of resolution would remain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from secagg.errors import ConfigurationError, MalformedUpdateError
from secagg.hazmat.prg import U32Stream

_ENCODE_BLOCK = 1 << 15  # values per block: the float64 buffers stay in L2

__all__ = ["validate_update", "flatten", "unflatten", "FlatSpec", "FixedPoint", "ring_dtype"]


def validate_update(x: object, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array of length ``dim`` (if given), else raise MalformedUpdateError."""
    if not isinstance(x, np.ndarray):
        raise MalformedUpdateError(f"update must be a numpy array, got {type(x).__name__}")
    if x.ndim != 1:
        raise MalformedUpdateError(f"update must be 1-D, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise MalformedUpdateError(f"update dtype {x.dtype} is not numeric")
    if dim is not None and x.shape[0] != dim:
        raise MalformedUpdateError(f"update has length {x.shape[0]}, expected {dim}")
    if x.size == 0:
        raise MalformedUpdateError("update is empty")
    out = x.astype(np.float64, copy=False)
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise MalformedUpdateError(f"update holds {bad} NaN/Inf values")
    return out


@dataclass(frozen=True)
class FlatSpec:
    """Names, shapes and dtypes needed to undo :func:`flatten`."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def flatten(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, FlatSpec]:
    """Concatenate named arrays (in mapping order) into one float64 vector."""
    names = tuple(arrays)
    spec = FlatSpec(names, tuple(tuple(np.shape(arrays[k])) for k in names),
                    tuple(str(np.asarray(arrays[k]).dtype) for k in names))
    if not names:
        return np.zeros(0), spec
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in names]), spec


def unflatten(vec: np.ndarray, spec: FlatSpec) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`; raises MalformedUpdateError if the length does not match ``spec``."""
    if vec.ndim != 1 or vec.size != spec.size:
        raise MalformedUpdateError(f"vector of shape {vec.shape} does not match spec of size {spec.size}")
    out, pos = {}, 0
    for name, shape, dt in zip(spec.names, spec.shapes, spec.dtypes):
        n = math.prod(shape)
        out[name] = vec[pos:pos + n].reshape(shape).astype(dt)
        pos += n
    return out


def ring_dtype(ring_bits: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding Z_{2^ring_bits} (uint32 for a 32-bit ring)."""
    if not 8 <= ring_bits <= 64:
        raise ConfigurationError(f"ring_bits must be in [8, 64], got {ring_bits}")
    for dt in ("<u2", "<u4", "<u8"):
        if ring_bits <= np.dtype(dt).itemsize * 8:
            return np.dtype(dt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point codec for values in ``[-clip, clip]`` summed by up to ``n_clients`` parties mod 2^ring_bits."""

    ring_bits: int = 32
    clip: float = 1.0
    n_clients: int = 2
    rounding: Literal["stochastic", "deterministic"] = "stochastic"
    out_of_range: Literal["raise", "clip"] = "raise"
    min_precision_bits: int = 8

    def __post_init__(self) -> None:
        ring_dtype(self.ring_bits)
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError(f"clip must be a positive finite number, got {self.clip}")
        if self.n_clients < 1:
            raise ConfigurationError(f"n_clients must be >= 1, got {self.n_clients}")
        if self.rounding not in ("stochastic", "deterministic"):
            raise ConfigurationError(f"unknown rounding {self.rounding!r}")
        if self.out_of_range not in ("raise", "clip"):
            raise ConfigurationError(f"unknown out_of_range policy {self.out_of_range!r}")
        if self.max_level < (1 << self.min_precision_bits):
            raise ConfigurationError(
                f"{self.n_clients} clients in a {self.ring_bits}-bit ring leave {self.precision_bits:.1f} bits per "
                f"value (< {self.min_precision_bits}); the sum would overflow or lose all precision: use more ring bits")

    @property
    def headroom_bits(self) -> int:
        """Bits reserved so that the sum of ``n_clients`` encodings cannot wrap."""
        return max(0, math.ceil(math.log2(self.n_clients)))

    @property
    def max_level(self) -> int:
        """Largest encoded magnitude of one contribution: n * max_level <= 2^(k-1) - 1, and <= 2^52 so that
        float64 scaling stays exact."""
        return min(((1 << (self.ring_bits - 1)) - 1) // self.n_clients, 1 << 52)

    @property
    def precision_bits(self) -> float:
        return math.log2(max(self.max_level, 1))

    @property
    def scale(self) -> float:
        # stochastic rounding may round up by one level, so reserve it
        return (self.max_level - 1) / self.clip

    @property
    def dtype(self) -> np.dtype:
        return ring_dtype(self.ring_bits)

    @property
    def resolution(self) -> float:
        """Value of one quantization step."""
        return 1.0 / self.scale

    def encode(self, x: np.ndarray, factor: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
        """Quantize the finite vector ``factor * x`` to ring elements (the range check applies to ``factor * x``),
        into ``out`` if given (same length, the ring dtype); nothing is written when a check fails.

        Stochastic rounding is unbiased: it rounds up with probability equal to the fractional part, at 32-bit
        CSPRNG resolution. Works in cache-sized blocks with reused buffers (no vector-sized float temporaries).
        """
        v = validate_update(x)
        if not math.isfinite(factor):
            raise MalformedUpdateError(f"factor {factor} is not finite")
        if self.out_of_range == "raise":
            worst = float(np.max(np.abs(v))) * abs(factor)
            if worst > self.clip:
                raise MalformedUpdateError(f"value {worst:.6g} outside the clip range [-{self.clip}, {self.clip}]")
        n, step = v.size, min(v.size, _ENCODE_BLOCK)
        if out is None:
            out = np.empty(n, dtype=self.dtype)
        elif out.shape != (n,) or out.dtype != self.dtype:
            raise ValueError(f"out must be a length-{n} {self.dtype} vector")
        scaled, low, ints = np.empty(step), np.empty(step), np.empty(step, dtype=np.int64)
        up = np.empty(step, dtype=bool)
        uniforms = U32Stream(step) if self.rounding == "stochastic" else None
        mult = float(factor) * self.scale
        for lo in range(0, n, step):
            m = min(step, n - lo)
            s, q = scaled[:m], low[:m]
            np.multiply(v[lo:lo + m], mult, out=s)
            if self.out_of_range == "clip":
                np.clip(s, -self.clip * self.scale, self.clip * self.scale, out=s)
            if uniforms is None:
                np.rint(s, out=q)
            else:
                np.floor(s, out=q)
                np.subtract(s, q, out=s)
                s *= 4294967296.0
                np.less(uniforms.next(m), s, out=up[:m])
                np.add(q, up[:m], out=q)
            np.copyto(ints[:m], q, casting="unsafe")  # exact: |q| <= max_level <= 2^52
            np.copyto(out[lo:lo + m], ints[:m], casting="unsafe")  # wraps mod 2^bits (two's complement)
        if self.ring_bits < 8 * out.itemsize:
            out &= out.dtype.type((1 << self.ring_bits) - 1)
        return out

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Interpret a ring element (a sum of at most ``n_clients`` encodings) as a signed float vector."""
        t = np.asarray(total).astype(np.uint64)
        if self.ring_bits < 64:
            t &= np.uint64((1 << self.ring_bits) - 1)
        signed = t.astype(np.int64)  # two's complement reinterpretation for 64-bit rings
        if self.ring_bits < 64:
            half = np.int64(1 << (self.ring_bits - 1))
            signed = np.where(signed >= half, signed - np.int64(1 << self.ring_bits), signed)
        return signed.astype(np.float64) / self.scale
