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

_ENCODE_BLOCK = 1 << 16  # values per block: the float64 buffers stay in L2

__all__ = ["check_weight", "validate_update", "update_length", "update_slice", "flatten", "unflatten", "FlatSpec",
           "FixedPoint", "ring_dtype", "MAX_DIM"]

MAX_DIM = 1 << 28  # values one update may have in any scheme (a 134.5M-parameter model is 2^27.0); larger is refused


def _shape_checked(x: object, dim: int | None = None) -> np.ndarray:
    """``x`` unchanged if it is a non-empty 1-D numeric array of length ``dim`` (if given), else raise."""
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
    return x


def _extremes(x: np.ndarray, whole: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum of ``x`` (part of ``whole``), raising MalformedUpdateError if ``x`` holds NaN/Inf
    (a NaN propagates through both reductions, an infinity is an extreme): no temporaries."""
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(whole)))
        raise MalformedUpdateError(f"update holds {bad} NaN/Inf values")
    return lo, hi


def check_weight(weight: object, bound: float | None = None) -> float:
    """``weight`` as a float if it is a real number (not a bool, string or array), finite, ``> 0`` and at most
    ``bound`` (if given); otherwise MalformedUpdateError. Every scheme's client checks its weight with this."""
    if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise MalformedUpdateError(f"weight must be a real number, got {type(weight).__name__} {weight!r}")
    w = float(weight)
    if not (math.isfinite(w) and w > 0):
        raise MalformedUpdateError(f"weight must be a positive finite number, got {w}")
    if bound is not None and w > bound:
        raise MalformedUpdateError(f"weight {w} exceeds the public weight bound {bound}")
    return w


def validate_update(x: object, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a finite 1-D float64 array of length ``dim`` (if given), else raise MalformedUpdateError."""
    v = _shape_checked(x, dim)
    _extremes(v, v)
    return v.astype(np.float64, copy=False)


def update_length(x: object) -> int:
    """Length of an update that may be streamed: a 1-D numeric numpy array, or any object with a 1-D ``shape``
    whose slices ``x[a:b]`` are such arrays (e.g. a ``np.memmap`` or a lazily generated update)."""
    if isinstance(x, np.ndarray):
        return int(_shape_checked(x).shape[0])
    shape = getattr(x, "shape", None)
    if not (isinstance(shape, tuple) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0
            and hasattr(x, "__getitem__")):
        raise MalformedUpdateError(f"update must be a numpy array or a sliceable 1-D source, got {type(x).__name__}")
    return shape[0]


def update_slice(x: object, lo: int, hi: int) -> np.ndarray:
    """``x[lo:hi]`` validated as :func:`validate_update` does (finite, numeric, exactly ``hi - lo`` values)."""
    return validate_update(x[lo:hi], hi - lo)  # type: ignore[index]


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
        into ``out`` if given (same length, the ring dtype). A failed check raises MalformedUpdateError; ``out``
        may then hold a partial encoding (checks run block by block, in the same pass as the encoding).

        Stochastic rounding is unbiased at 32-bit CSPRNG resolution: a value ``q + f`` (``q`` an integer level,
        ``0 <= f < 1``) rounds up with probability ``ceil(f * 2^32) / 2^32``. Works in cache-sized blocks with
        reused buffers (no vector-sized temporaries); float32/integer inputs are widened block by block.
        """
        v = _shape_checked(x)
        if not math.isfinite(factor):
            raise MalformedUpdateError(f"factor {factor} is not finite")
        n = v.size
        if out is None:
            out = np.empty(n, dtype=self.dtype)
        elif out.shape != (n,) or out.dtype != self.dtype:
            raise ValueError(f"out must be a length-{n} {self.dtype} vector")
        if self.rounding == "stochastic" and self.max_level < (1 << 31):
            self._encode_fixed32(v, float(factor), out)
        else:
            self._encode_float(v, float(factor), out)
        if self.ring_bits < 8 * out.itemsize:
            out &= out.dtype.type((1 << self.ring_bits) - 1)
        return out

    def check(self, x: np.ndarray, factor: float = 1.0) -> None:
        """Raise MalformedUpdateError exactly where :meth:`encode` of ``factor * x`` would (shape, NaN/Inf, range),
        without encoding (no randomness drawn, no output), block by block."""
        v = _shape_checked(x)
        if not math.isfinite(factor):
            raise MalformedUpdateError(f"factor {factor} is not finite")
        for lo in range(0, v.size, _ENCODE_BLOCK):
            self._check(v[lo:lo + _ENCODE_BLOCK], v, float(factor))

    def _check(self, block: np.ndarray, whole: np.ndarray, factor: float) -> None:
        lo, hi = _extremes(block, whole)
        if self.out_of_range == "raise":
            worst = max(abs(lo), abs(hi)) * abs(factor)
            if worst > self.clip:
                raise MalformedUpdateError(f"value {worst:.6g} outside the clip range [-{self.clip}, {self.clip}]")

    def _encode_fixed32(self, v: np.ndarray, factor: float, out: np.ndarray) -> None:
        """Stochastic rounding in integers: with ``F = ceil(factor * scale * x * 2^32)`` (exact in int64, as
        ``|F| < max_level * 2^32 < 2^63``) and a uniform 32-bit ``u``, the level is ``floor((F + u) / 2^32)``:
        the high 32-bit word of ``F + u``, which is ``q + 1`` exactly when ``u >= 2^32 - ceil(f * 2^32)``.
        One fused pass per block (:func:`secagg.kernels.encode_fixed32_block`); the block is refused after it
        if it held a NaN/Inf or a value out of range (``out`` then holds a partial encoding)."""
        from secagg.kernels import encode_fixed32_block

        step = min(v.size, _ENCODE_BLOCK)
        uniforms = U32Stream(step)
        mult = np.float64(factor * self.scale * 4294967296.0)  # exact power-of-two rescaling of factor * scale
        bound = self.clip * self.scale * 4294967296.0
        clip = self.out_of_range == "clip"
        for lo in range(0, v.size, step):
            m = min(step, v.size - lo)
            worst, bad = encode_fixed32_block(v[lo:lo + m], mult, bound, clip, uniforms.next(m), out[lo:lo + m])
            if bad:
                raise MalformedUpdateError(f"update holds {int(np.count_nonzero(~np.isfinite(v)))} NaN/Inf values")
            if not clip and worst * abs(factor) > self.clip:
                raise MalformedUpdateError(f"value {worst * abs(factor):.6g} outside the clip range "
                                           f"[-{self.clip}, {self.clip}]")

    def _encode_float(self, v: np.ndarray, factor: float, out: np.ndarray) -> None:
        """Deterministic rounding, and stochastic rounding for rings wider than 32 bits, in float64 blocks."""
        n, step = v.size, min(v.size, _ENCODE_BLOCK)
        scaled, low, ints = np.empty(step), np.empty(step), np.empty(step, dtype=np.int64)
        up = np.empty(step, dtype=bool)
        uniforms = U32Stream(step) if self.rounding == "stochastic" else None
        mult = np.float64(factor * self.scale)
        for lo in range(0, n, step):
            m = min(step, n - lo)
            s, q, part = scaled[:m], low[:m], v[lo:lo + m]
            self._check(part, v, factor)
            np.multiply(part, mult, out=s)
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

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Interpret a ring element (a sum of at most ``n_clients`` encodings) as a signed float vector, block by
        block: nothing but the float64 result is the size of the whole."""
        total = np.asarray(total)
        out = np.empty(total.shape[0], dtype=np.float64)
        mask, half = np.uint64((1 << self.ring_bits) - 1 if self.ring_bits < 64 else 0), 1 << (self.ring_bits - 1)
        for lo in range(0, total.shape[0], _ENCODE_BLOCK):
            t = total[lo:lo + _ENCODE_BLOCK].astype(np.uint64)
            if self.ring_bits < 64:
                t &= mask
            signed = t.view(np.int64)  # two's complement reinterpretation for 64-bit rings
            if self.ring_bits < 64:
                signed = np.where(signed >= np.int64(half), signed - np.int64(1 << self.ring_bits), signed)
            np.divide(signed, self.scale, out=out[lo:lo + _ENCODE_BLOCK])
        return out
