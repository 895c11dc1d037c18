"""Public parameters of one masking round, validated once and shared by the server and every client.

Rules (``n`` participants, ``k`` neighbours, ``t`` threshold):

* ``n >= 2`` (the sum of one client is that client's input); ids are distinct ints in ``0..2^31-3`` (a client's
  Shamir x-coordinate is ``id + 1`` in GF(2^31-1)).
* ``k`` defaults to ``min(n-1, 2*ceil(log2 n) + 1)``; it is then made effective by
  :func:`~secagg.masking.graph.effective_degree` (capped at n-1, raised by one for odd k with odd n). After
  construction ``neighbors`` holds the effective degree; ``k = n-1`` is the complete graph (classic SecAgg).
* ``t`` defaults to ``max(2, ceil(2(k+1)/3))``, capped at ``k+1``. Any ``t`` must satisfy ``2 <= t <= k+1`` and
  ``2t > k+1``: a strict majority of every neighbourhood (k neighbours plus the owner), so the holders who reveal
  a client's self-mask share and those who reveal its mask-key share (disjoint sets of honest clients) can never
  both reach ``t``. After construction ``threshold`` holds the resolved value.
* Values lane encodes ``w*x`` with range ``clip*weight_bound``; the weight lane encodes ``w`` with range
  ``weight_bound``; both with headroom for all ``n`` clients so the sum cannot wrap (see FixedPoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from secagg.encoding import FixedPoint
from secagg.errors import ConfigurationError
from secagg.masking.graph import effective_degree, harary_graph

__all__ = ["MaskingConfig", "MAX_CLIENT_ID"]

MAX_CLIENT_ID = (1 << 31) - 3


@dataclass(frozen=True)
class MaskingConfig:
    """Public round parameters; ``neighbors``/``threshold`` are resolved (never None) after construction."""

    participants: tuple[int, ...]
    dim: int
    threshold: int | None = None
    neighbors: int | None = None
    ring_bits: int = 32
    clip: float = 1.0
    weight_bound: float = 1.0
    rounding: str = "stochastic"
    out_of_range: str = "raise"
    round_id: int = 0
    graph_seed: bytes = bytes(16)

    def __post_init__(self) -> None:
        ids = tuple(sorted(int(p) for p in self.participants))
        if len(set(ids)) != len(ids) or any(not 0 <= p <= MAX_CLIENT_ID for p in ids):
            raise ConfigurationError(f"participants must be distinct ids in 0..{MAX_CLIENT_ID}")
        if len(ids) < 2:
            raise ConfigurationError("masking needs at least 2 participants (a sum of one is that client's input)")
        object.__setattr__(self, "participants", ids)
        for name, lo in (("dim", 1), ("round_id", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != 16:
            raise ConfigurationError("graph_seed must be 16 bytes")
        for name in ("clip", "weight_bound"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigurationError(f"{name} must be a positive finite number, got {v!r}")
        n = len(ids)
        k = min(n - 1, 2 * math.ceil(math.log2(n)) + 1) if self.neighbors is None else int(self.neighbors)
        k = effective_degree(n, k)
        t = min(k + 1, max(2, math.ceil(2 * (k + 1) / 3))) if self.threshold is None else int(self.threshold)
        if not 2 <= t <= k + 1 or 2 * t <= k + 1:
            raise ConfigurationError(f"threshold {t} must satisfy 2 <= t <= k+1 = {k + 1} and 2t > k+1 "
                                     "(a strict majority of each neighbourhood)")
        object.__setattr__(self, "neighbors", k)
        object.__setattr__(self, "threshold", t)
        _ = self.value_codec, self.weight_codec  # validate ring size, rounding and range policy now

    @property
    def n(self) -> int:
        return len(self.participants)

    @property
    def t(self) -> int:
        return int(self.threshold)  # type: ignore[arg-type]

    @property
    def complete(self) -> bool:
        return self.neighbors == self.n - 1

    @cached_property
    def value_codec(self) -> FixedPoint:
        """Encodes ``w * x`` with ``|w * x| <= clip * weight_bound``, headroom for all participants."""
        return FixedPoint(ring_bits=self.ring_bits, clip=float(self.clip) * float(self.weight_bound),
                          n_clients=self.n, rounding=self.rounding, out_of_range=self.out_of_range)  # type: ignore[arg-type]

    @cached_property
    def weight_codec(self) -> FixedPoint:
        """Encodes ``w`` in ``(0, weight_bound]``; out-of-range weights always raise."""
        return FixedPoint(ring_bits=self.ring_bits, clip=float(self.weight_bound), n_clients=self.n,
                          rounding=self.rounding, out_of_range="raise")  # type: ignore[arg-type]

    @property
    def dtype(self) -> np.dtype:
        """The ring dtype (uint32 for a 32-bit ring) used for masks, sums and the wire."""
        return self.value_codec.dtype

    @property
    def ring_mask(self) -> int:
        return (1 << self.ring_bits) - 1

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """Every participant's neighbour set (symmetric, k-regular)."""
        return harary_graph(self.participants, int(self.neighbors), self.graph_seed)  # type: ignore[arg-type]
