"""Quantization of one packed contribution: ``[w*x_1, ..., w*x_D, w]`` as offset (non-negative) lane values.

Invariant: every lane value lies in ``[1, 2^b - 1]`` (``b = params.value_bits``): a value ``v`` is quantized by a
one-party :class:`~secagg.encoding.FixedPoint` in a ``b``-bit ring to ``q`` with ``|q| <= 2^(b-1) - 1`` and sent
as ``q + 2^(b-1)``. A sum of ``m`` contributions therefore decodes as ``(lane_sum - m * 2^(b-1)) / scale``, exact
in the integers; the only error is the quantization of each client's values (at most one step per client with
stochastic rounding, half a step with deterministic rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from secagg.encoding import FixedPoint
from secagg.errors import ConfigurationError, DecryptionError, MalformedUpdateError

__all__ = ["PackedCodec"]


@dataclass(frozen=True)
class PackedCodec:
    """Public encoding of one round: values ``w*x`` in ``[-clip*weight_bound, clip*weight_bound]`` and weights in
    ``(0, weight_bound]``, each quantized to ``value_bits`` bits."""

    value_bits: int
    clip: float = 1.0
    weight_bound: float = 1.0
    rounding: str = "stochastic"

    def __post_init__(self) -> None:
        for name in ("clip", "weight_bound"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigurationError(f"{name} must be a positive finite number, got {v!r}")
        _ = self.values, self.weights  # validates value_bits and rounding now

    @cached_property
    def values(self) -> FixedPoint:
        return FixedPoint(ring_bits=self.value_bits, clip=float(self.clip) * float(self.weight_bound), n_clients=1,
                          rounding=self.rounding)  # type: ignore[arg-type]

    @cached_property
    def weights(self) -> FixedPoint:
        return FixedPoint(ring_bits=self.value_bits, clip=float(self.weight_bound), n_clients=1,
                          rounding=self.rounding)  # type: ignore[arg-type]

    @property
    def offset(self) -> int:
        return 1 << (self.value_bits - 1)

    def encode_weight(self, weight: float) -> int:
        """The lane value (in ``[1, 2^b - 1]``) of the weight ``w``; a weight outside ``(0, weight_bound]`` raises."""
        if not (math.isfinite(weight) and 0 < weight <= self.weight_bound):
            raise MalformedUpdateError(f"weight {weight} is outside (0, {self.weight_bound}]")
        return int((int(self.weights.encode(np.array([weight]))[0]) + self.offset) & ((1 << self.value_bits) - 1))

    def check_values(self, x: np.ndarray, weight: float) -> None:
        """MalformedUpdateError exactly where :meth:`encode_values` would raise, encoding nothing."""
        self.values.check(weight * x)

    def encode_values(self, x: np.ndarray, weight: float) -> np.ndarray:
        """Lane values (uint64, each in ``[1, 2^b - 1]``) of ``w*x`` (any slice of an update); out-of-range raises."""
        off, mask = np.uint64(self.offset), np.uint64((1 << self.value_bits) - 1)
        return (self.values.encode(weight * x).astype(np.uint64) + off) & mask

    def _centred(self, lane_sums: np.ndarray, contributors: int) -> np.ndarray:
        centred = lane_sums - np.int64(contributors) * np.int64(self.offset)
        limit = contributors * (self.offset - 1)
        if centred.size and int(np.max(np.abs(centred))) > limit:
            raise DecryptionError("a lane sum lies outside what the contributors can produce (carry or noise overflow)")
        return centred

    def decode_values(self, lane_sums: np.ndarray, contributors: int) -> np.ndarray:
        """Σ w_i x_i from value lane sums (any block of them) of ``contributors`` contributions."""
        return self._centred(lane_sums, contributors) / self.values.scale

    def decode_weight(self, lane_sum: np.ndarray, contributors: int) -> float:
        """Σ w_i from the weight lane's sum (a one-element array); DecryptionError unless it is positive."""
        total = float(self._centred(lane_sum, contributors)[0]) / self.weights.scale
        if not total > 0:
            raise DecryptionError(f"decrypted total weight {total} is not positive")
        return total

    def error_bound(self, contributors: int) -> tuple[float, float]:
        """Largest quantization error of (Σ w_i x_i, Σ w_i) over ``contributors`` clients."""
        steps = contributors * (1.0 if self.rounding == "stochastic" else 0.5)
        return steps / self.values.scale, steps / self.weights.scale
