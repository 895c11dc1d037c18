"""Packed BFV parameters: several quantized values ("lanes") per plaintext slot, with carry headroom for a cohort.

Why BFV and not CKKS: BFV slots hold integers mod a plaintext prime ``t`` and sums of ciphertexts decrypt to the
*exact* integer sum, so lanes never bleed into each other as long as no lane sum reaches ``2^lane_bits``; a CKKS
slot carries approximation noise and, through TenSEAL, only its real half is usable (N/2 slots per ciphertext
against BFV's N).

Ring: N = 4096, coefficient modulus [60, 49] (109 bits: the HomomorphicEncryption.org 128-bit bound for N=4096).
Ciphertexts live at the single 60-bit data prime, so one ciphertext is 2 * 4096 residues of 8 bytes on the wire
(:mod:`secagg.hazmat.rlwe`) for 4096 slots: 16 bytes per slot, i.e. 4x float32 per *slot*, and 4x/lanes per value.

Invariants (``h = ceil(log2 max_cohort)``, ``b = value_bits``, ``L = b + h``, ``k = lanes``):

* each lane of one contribution is an integer in ``[0, 2^b - 1]``, so the sum of at most ``max_cohort`` of them
  is below ``2^L`` and lane ``l`` of a slot (bits ``[l*L, (l+1)*L)``) never carries into lane ``l+1``;
* ``t`` is a prime = 1 mod 2N with ``k*L + 1`` bits, so every slot sum ``< 2^(k*L) < t`` decrypts exactly;
* noise: a fresh ciphertext with a ``P``-bit ``t`` has an invariant noise budget of about ``60 - P - 7`` bits
  (measured with SEAL) and each doubling of the number of summed ciphertexts costs at most one bit, so
  ``P + h <= 60 - 7 - NOISE_MARGIN_BITS`` keeps ``NOISE_MARGIN_BITS`` of budget after ``max_cohort`` additions;
* ``k`` is the largest lane count whose ``b`` is still at least ``min_value_bits``; ``b`` is then as large as fits.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from secagg.errors import ConfigurationError, KeyMisuseError, MalformedMessageError
from secagg.hazmat.rlwe import RingLayout
from secagg.he_round import ring_of, unbundle

__all__ = ["PackedParams", "PublicBFV", "load_public_context", "pack", "unpack", "POLY_MODULUS_DEGREE",
           "COEFF_MOD_BIT_SIZES", "MAX_COHORT_LIMIT"]

POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (60, 49)
_FRESH_NOISE_BITS = 7      # measured: fresh budget = 60 - log2(t) - 7 for N=4096 (SEAL's clipped-normal errors)
NOISE_MARGIN_BITS = 3
_PLAIN_PLUS_HEADROOM = COEFF_MOD_BIT_SIZES[0] - _FRESH_NOISE_BITS - NOISE_MARGIN_BITS  # P + h <= 50
MAX_COHORT_LIMIT = 1 << 14
_MIN_VALUE_BITS, _MAX_VALUE_BITS = 10, 32


@dataclass(frozen=True)
class PackedParams:
    """Public parameters of a packed-BFV session: cohort bound and the lane layout derived from it."""

    max_cohort: int = 32
    min_value_bits: int = 14

    def __post_init__(self) -> None:
        for name, v, lo, hi in (("max_cohort", self.max_cohort, 2, MAX_COHORT_LIMIT),
                                ("min_value_bits", self.min_value_bits, _MIN_VALUE_BITS, _MAX_VALUE_BITS)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigurationError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
        if self.lanes < 1:
            raise ConfigurationError(f"max_cohort={self.max_cohort} leaves fewer than {self.min_value_bits} value bits "
                                     "even with one lane per slot; lower min_value_bits or the cohort")

    @property
    def slots(self) -> int:
        """Plaintext slots per ciphertext (N)."""
        return POLY_MODULUS_DEGREE

    @property
    def headroom_bits(self) -> int:
        """h: carry bits so that ``max_cohort`` lane values sum without overflow."""
        return math.ceil(math.log2(self.max_cohort))

    def _bits_for(self, lanes: int) -> int:
        return (_PLAIN_PLUS_HEADROOM - 1 - (lanes + 1) * self.headroom_bits) // lanes

    @property
    def lanes(self) -> int:
        """k: quantized values per slot (0 when not even one lane fits; refused at construction)."""
        k = 0
        while self._bits_for(k + 1) >= self.min_value_bits:
            k += 1
        return k

    @property
    def value_bits(self) -> int:
        """b: bits of one quantized value (largest that fits with ``lanes`` lanes, capped at 32)."""
        return min(self._bits_for(self.lanes), _MAX_VALUE_BITS)

    @property
    def lane_bits(self) -> int:
        """L = b + h: width of one lane of a slot sum."""
        return self.value_bits + self.headroom_bits

    @property
    def plain_bits(self) -> int:
        return self.lanes * self.lane_bits + 1

    @cached_property
    def plain_modulus(self) -> int:
        """t: the largest ``plain_bits``-bit prime = 1 mod 2N that is not a coefficient prime (SEAL needs them
        coprime; deterministic)."""
        taken = {q.value() for q in sealapi.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MOD_BIT_SIZES))}
        primes = sealapi.PlainModulus.Batching(POLY_MODULUS_DEGREE, [self.plain_bits] * 3)
        return int(max(q.value() for q in primes if q.value() not in taken))

    @property
    def guard_slots(self) -> int:
        """Zero slots every contribution encrypts after its lanes: a uniform residual makes each one uniform mod
        ``t``, so all of them pass with probability ``t^-guard_slots <= 2^-128``."""
        return -(-128 // (self.plain_modulus.bit_length() - 1))

    def slots_for(self, values: int) -> int:
        """Slots holding ``values`` lanes (``ceil(values / lanes)``)."""
        return -(-values // self.lanes)

    def chunk_count(self, values: int) -> int:
        """Ciphertexts carrying ``values`` lanes and the guard slots (arithmetic: nothing is allocated)."""
        return -(-(self.slots_for(values) + self.guard_slots) // self.slots)

    def chunk_lengths(self, values: int) -> list[int]:
        """Slots of each ciphertext carrying ``values`` lanes and the guards: full ciphertexts, then the rest."""
        if values < 1:
            raise MalformedMessageError(f"need at least one value, got {values}")
        full, rest = divmod(self.slots_for(values) + self.guard_slots, self.slots)
        return [self.slots] * full + ([rest] if rest else [])

    def descriptor(self) -> bytes:
        """Canonical bytes of every public parameter (bound into the session id)."""
        return struct.pack("<4sIIIIIQ", b"PBFV", POLY_MODULUS_DEGREE, self.max_cohort, self.lanes,
                           self.value_bits, self.headroom_bits, self.plain_modulus)


def pack(lanes: np.ndarray, params: PackedParams) -> np.ndarray:
    """Slot integers (uint64) from lane values in ``[0, 2^b)``: lane ``l`` of slot ``j`` is ``lanes[l*S + j]``,
    ``S = slots_for(len(lanes))``, placed at bits ``[l*L, (l+1)*L)``; missing tail lanes are 0."""
    k, s = params.lanes, params.slots_for(lanes.shape[0])
    grid = np.zeros(k * s, dtype=np.uint64)
    grid[:lanes.shape[0]] = lanes
    grid = grid.reshape(k, s)
    out = grid[0].copy()
    for lane in range(1, k):
        out |= grid[lane] << np.uint64(lane * params.lane_bits)
    return out


def unpack(slots: np.ndarray, count: int, params: PackedParams, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack` for lane sums: lane values ``[lo, hi)`` (default: all ``count``) of ``count``
    packed values, each ``< 2^L``, as int64; reads only the slots holding them, so a caller can decode in blocks."""
    k, L = params.lanes, params.lane_bits
    s = params.slots_for(count)
    if slots.shape[0] != s:
        raise MalformedMessageError(f"{slots.shape[0]} slots cannot hold exactly {count} lanes")
    hi = count if hi is None else hi
    if not 0 <= lo <= hi <= count:
        raise MalformedMessageError(f"lanes [{lo}, {hi}) are not within {count}")
    mask, out, pos = np.uint64((1 << L) - 1), np.empty(hi - lo, dtype=np.int64), lo
    while pos < hi:
        lane, j = divmod(pos, s)
        end = min(hi, (lane + 1) * s)
        out[pos - lo:end - lo] = (slots[j:j + end - pos] >> np.uint64(lane * L)) & mask
        pos = end
    return out


@dataclass(frozen=True, eq=False)
class PublicBFV:
    """A key holder's public packed session: the BFV context (public key only), its parameters, the fresh-level
    ring, the X25519 sealing key and ``session_id`` = SHA-256(public bundle || params)."""

    context: ts.Context
    params: PackedParams
    session_id: bytes
    layout: RingLayout
    parms_id: list[int]
    seal_key: bytes


def _check_context(ctx: ts.Context, params: PackedParams) -> None:
    data = ctx.seal_context().data.key_context_data()
    parms = data.parms()
    if parms.scheme() != ts.SCHEME_TYPE.BFV.value:
        raise ConfigurationError("not a BFV context")
    bits = tuple(q.bit_count() for q in parms.coeff_modulus())
    if parms.poly_modulus_degree() != POLY_MODULUS_DEGREE or bits != COEFF_MOD_BIT_SIZES:
        raise ConfigurationError(f"context is N={parms.poly_modulus_degree()} {bits}; packed mode needs "
                                 f"N={POLY_MODULUS_DEGREE} {COEFF_MOD_BIT_SIZES}")
    if parms.plain_modulus().value() != params.plain_modulus:
        raise ConfigurationError("context plaintext modulus does not match the packed parameters")


def make_context(params: PackedParams) -> ts.Context:
    """A fresh secret BFV context for ``params`` (key holder only)."""
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=POLY_MODULUS_DEGREE, plain_modulus=params.plain_modulus,
                     coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
    _check_context(ctx, params)
    return ctx


def session_id(public_bytes: bytes, params: PackedParams) -> bytes:
    return hashlib.sha256(bytes(public_bytes) + params.descriptor()).digest()


def load_public_context(data: bytes, params: PackedParams, *, need_public_key: bool) -> PublicBFV:
    """Parse a public bundle for ``params``: a secret key raises KeyMisuseError, a mismatch or unusable context
    ConfigurationError."""
    if not isinstance(params, PackedParams):
        raise ConfigurationError("params must be a PackedParams")
    context, seal_key = unbundle(data)
    try:
        ctx = ts.context_from(context)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError for any unparsable context
        raise ConfigurationError(f"public context does not deserialize: {exc}") from exc
    if ctx.is_private() or ctx.has_secret_key():
        raise KeyMisuseError("this context holds the secret key; only the key holder may have it")
    if need_public_key and not ctx.has_public_key():
        raise ConfigurationError("public context has no public key; clients cannot encrypt")
    _check_context(ctx, params)
    layout, parms_id = ring_of(ctx, ntt=False)
    return PublicBFV(ctx, params, session_id(data, params), layout, parms_id, seal_key)
