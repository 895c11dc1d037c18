"""Public parameters of one masking round, validated once and shared by the server and every client.

Threat model the rules below are derived from: the server may deviate arbitrarily (choose whose messages to
forward, claim any client dropped, replay, forge unsigned messages) and may collude with up to ``max_corrupt``
(``C``) clients; clients sign with identities the server cannot forge. Rules (``n`` participants, ``k``
neighbours, ``t`` threshold, ``e`` = ``share_dropouts``):

* ``n >= 2``; ids are distinct ints in ``0..2^31-3`` (a client's Shamir x-coordinate is ``id + 1`` in GF(2^31-1)).
* ``k`` defaults to ``min(n-1, 2*ceil(log2 n) + 1)``, made effective by
  :func:`~secagg.masking.graph.effective_degree`; ``k = n-1`` is the complete graph (classic SecAgg).
* ``t`` defaults to ``max(2, ceil(2(k+1)/3))``; ``2 <= t <= k+1``.
* A client masks with the neighbours whose shares the server delivered (``D``) and refuses a delivery missing
  more than ``e`` of the neighbours it shared with (``R``). A malicious server that wants the sum over a set ``S``
  of honest clients alone must reveal every member's self-mask ``b`` (``t`` shares, from its holders that are
  alive) while claiming every honest neighbour outside ``S`` dropped; at most ``|S| + e + C`` holders of a
  member's shares can then answer, so **every sum it learns covers at least ``t - e - C`` honest inputs**. The
  rule ``t >= C + e + 2`` (``ConfigurationError`` otherwise) makes that at least two: no single input, ever.
  ``e`` defaults to ``min(1, t-2)``, ``C`` to ``t - 2 - e``.
* Consistency: an unmask request must carry valid signatures on the same survivor list from at least
  ``min_signers = max(t, floor((n + C)/2) + 1)`` participants. Any two such lists share an honest signer, and an
  honest client signs once, so every honest client that reveals anything sees the same survivor list: none
  reveals a self-mask share of a client another treats as dropped.
* ``round_nonce`` (32 bytes, fresh from the CSPRNG by default) makes the round unique; ``terms`` is the digest of
  the round's public terms (:func:`secagg.terms.terms_digest`: the weights' bound, the cohort size, anything that
  sets a client's noise); :attr:`session_id` hashes every public field, and every signature, share encryption
  and mask key binds it, so nothing from another round, another cohort or other terms is accepted.
* Values lane encodes ``w*x`` with range ``clip*weight_bound``; the weight lane encodes ``w`` with range
  ``weight_bound``; both with headroom for all ``n`` clients so the sum cannot wrap (see FixedPoint).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from secagg.encoding import MAX_DIM, FixedPoint
from secagg.errors import ConfigurationError
from secagg.masking.graph import effective_degree, harary_graph
from secagg.terms import NO_TERMS, TERMS_BYTES

__all__ = ["MaskingConfig", "MAX_CLIENT_ID", "resolve_parameters", "corruption_bound"]

MAX_CLIENT_ID = (1 << 31) - 3


def _int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigurationError(f"{name} must be a non-negative int, got {v!r}")
    return v


def resolve_parameters(n: int, *, neighbors: int | None = None, threshold: int | None = None,
                       share_dropouts: int | None = None, max_corrupt: int | None = None) -> tuple[int, int, int, int]:
    """(k, t, e, c) of a masking round of ``n`` participants: the neighbour degree, Shamir threshold, share
    dropouts tolerated and corruption bound, the defaults filled in; ConfigurationError if they let a
    malicious server learn a sum of fewer than 2 honest inputs."""
    k = min(n - 1, 2 * math.ceil(math.log2(n)) + 1) if neighbors is None else _int("neighbors", neighbors)
    k = effective_degree(n, k)
    t = min(k + 1, max(2, math.ceil(2 * (k + 1) / 3))) if threshold is None else \
        _int("threshold", threshold)
    if not 2 <= t <= k + 1:
        raise ConfigurationError(f"threshold {t} must satisfy 2 <= t <= k+1 = {k + 1} (k = {k} neighbours)")
    e = min(1, t - 2) if share_dropouts is None else _int("share_dropouts", share_dropouts)
    c = max(0, t - 2 - e) if max_corrupt is None else _int("max_corrupt", max_corrupt)
    if t < c + e + 2:
        raise ConfigurationError(
            f"threshold {t} with max_corrupt={c} and share_dropouts={e} lets a malicious server learn sums of "
            f"fewer than 2 honest inputs (every sum covers t - e - C = {t - e - c}): use threshold >= "
            f"{c + e + 2} (at most k+1 = {k + 1}), or lower max_corrupt/share_dropouts so that "
            f"max_corrupt + share_dropouts <= {t - 2}")
    return k, t, e, c


def corruption_bound(n: int, **options: int | None) -> int:
    """The clients that may collude with the server in a masking round of ``n`` (``max_corrupt``, default: what
    the threshold allows); options as :func:`resolve_parameters`."""
    return resolve_parameters(n, **options)[3]


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
    max_corrupt: int | None = None
    share_dropouts: int | None = None
    round_nonce: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    terms: bytes = NO_TERMS

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
        if self.dim > MAX_DIM:  # before any party allocates dim + 1 values
            raise ConfigurationError(f"dim {self.dim} exceeds MAX_DIM = {MAX_DIM}")
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != 16:
            raise ConfigurationError("graph_seed must be 16 bytes")
        if not isinstance(self.round_nonce, bytes) or len(self.round_nonce) != 32:
            raise ConfigurationError("round_nonce must be 32 bytes (fresh from a CSPRNG for every round)")
        if not isinstance(self.terms, bytes) or len(self.terms) != TERMS_BYTES:
            raise ConfigurationError(f"terms must be a {TERMS_BYTES}-byte digest (secagg.terms.terms_digest)")
        for name in ("clip", "weight_bound"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigurationError(f"{name} must be a positive finite number, got {v!r}")
        k, t, e, c = resolve_parameters(len(ids), neighbors=self.neighbors, threshold=self.threshold,
                                        share_dropouts=self.share_dropouts, max_corrupt=self.max_corrupt)
        object.__setattr__(self, "neighbors", k)
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "share_dropouts", e)
        object.__setattr__(self, "max_corrupt", c)
        _ = self.value_codec, self.weight_codec  # validate ring size, rounding and range policy now

    @property
    def n(self) -> int:
        return len(self.participants)

    @property
    def t(self) -> int:
        return int(self.threshold)  # type: ignore[arg-type]

    @property
    def min_signers(self) -> int:
        """Valid consistency signatures an unmask request needs: any two sets this large share an honest signer."""
        return max(self.t, (self.n + int(self.max_corrupt)) // 2 + 1)  # type: ignore[arg-type]

    @property
    def min_honest_sum(self) -> int:
        """Fewest honest inputs in any sum a malicious server colluding with ``max_corrupt`` clients can learn."""
        return self.t - int(self.share_dropouts) - int(self.max_corrupt)  # type: ignore[arg-type]

    @cached_property
    def session_id(self) -> bytes:
        """SHA-256 over every public field: what signatures, share encryptions and mask keys bind."""
        ids = self.participants
        head = struct.pack("<qqqqqqqdd", self.round_id, self.dim, self.n, int(self.neighbors), self.t,  # type: ignore
                           int(self.max_corrupt), int(self.share_dropouts), float(self.clip),  # type: ignore
                           float(self.weight_bound))
        text = f"{self.ring_bits}|{self.rounding}|{self.out_of_range}".encode()
        return hashlib.sha256(b"secagg/masking/session/v2" + self.round_nonce + self.terms + self.graph_seed + head
                              + struct.pack(f"<{len(ids)}q", *ids) + text).digest()

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
