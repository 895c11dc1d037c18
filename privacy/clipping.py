"""L2 clipping of a whole flat model update (user-level DP): the sensitivity bound behind every noise share.

Invariant: ``clip_update(x, C)`` returns ``(y, ‖x‖₂)`` with ``y.shape == x.shape``, ``‖y‖₂ <= C`` exactly in
float64, ``y = x`` when ``‖x‖₂ <= C`` and ``y = x·c`` with ``0 < c <= C/‖x‖₂`` otherwise (direction kept).
Bad input raises :class:`~privacy.errors.InvalidUpdateError` (not 1-D, empty, non-numeric, NaN/Inf) or
:class:`~privacy.errors.ConfigurationError` (bad C); nothing is reshaped, truncated or zero-filled silently.
"""

from __future__ import annotations

import math

import numpy as np

from privacy.errors import ConfigurationError, InvalidUpdateError

__all__ = ["validate_update", "clip_update"]


def validate_update(update: object) -> np.ndarray:
    """``update`` as a finite, non-empty 1-D float64 array, else InvalidUpdateError."""
    if not isinstance(update, np.ndarray):
        raise InvalidUpdateError(f"update must be a numpy array, got {type(update).__name__}")
    if update.ndim != 1:
        raise InvalidUpdateError(f"update must be a flat 1-D vector, got shape {update.shape}")
    if update.size == 0:
        raise InvalidUpdateError("update is empty")
    if update.dtype.kind not in "fiu":
        raise InvalidUpdateError(f"update dtype {update.dtype} is not real-valued")
    out = update.astype(np.float64, copy=False)
    if not np.isfinite(out).all():
        raise InvalidUpdateError(f"update holds {int(np.count_nonzero(~np.isfinite(out)))} NaN/Inf values")
    return out


def clip_update(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``update`` into the L2 ball of radius ``clip_norm``; return (clipped float64 copy, original norm)."""
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) \
            or not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigurationError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    x = validate_update(update)
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(x))
    if not math.isfinite(norm):  # finite entries whose squares overflow: rescale before measuring
        peak = float(np.max(np.abs(x)))
        norm = peak * float(np.linalg.norm(x / peak))
    if norm <= clip_norm:
        return x.copy(), norm
    factor = clip_norm / norm
    out = x * factor
    while np.linalg.norm(out) > clip_norm:  # rounding can overshoot by an ulp; shrink until the bound holds
        factor = math.nextafter(factor, 0.0) * (1 - 2.0**-52)
        out = x * factor
    return out, norm
