"""Vetted CKKS parameter sets and the TenSEAL context checks every CKKS role shares.

Security invariant: every accepted set keeps its total coefficient modulus (all primes, the special key-switching
prime included) within the HomomorphicEncryption.org standard's bound for 128-bit classical security with a
ternary secret (:data:`MAX_COEFF_BITS`). A set that exceeds it, or that is otherwise unusable, raises
``ConfigurationError`` at construction, so no role can ever run with one.

Layout of one contribution of ``dim`` values: the lanes ``[w*x_1, ..., w*x_dim, w, 0 x GUARD_SLOTS]`` in
``ceil(lanes / slots)`` ciphertexts ("chunks"), chunk ``k`` holding lanes ``[k*slots, (k+1)*slots)``. All
ciphertexts stay at the fresh level and scale ``Δ = 2^scale_bits`` (roles only add). A decrypted slot must stay
below :attr:`CKKSParams.fresh_value_bound` (two bits of margin for noise and encoding); past it a sum wraps
silently, so clients refuse inputs that could reach it and the key holder refuses sums beyond it. The guard
slots decrypt to ``|g| <= GUARD_TOLERANCE`` for an honest sum; a residual pad makes each one a Gaussian-like value
of spread about ``(q/Δ)·sqrt(N/24)``, so the chance that all four pass is below ``2^-128`` for both vetted sets
(:attr:`CKKSParams.guard_soundness_bits`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from secagg.errors import ConfigurationError, KeyMisuseError, MalformedMessageError
from secagg.hazmat.rlwe import RingLayout
from secagg.he_round import ring_of, unbundle

__all__ = ["CKKSParams", "PARAMS", "MAX_COEFF_BITS", "GUARD_SLOTS", "GUARD_TOLERANCE", "resolve", "PublicContext",
           "load_public_context", "chunk_count", "chunk_lengths", "params_of"]

#: HomomorphicEncryption.org security standard (2018), Table 1: largest log2(q) for 128-bit security, ternary secret.
MAX_COEFF_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
_MIN_PRIME_BITS, _MAX_PRIME_BITS = 20, 60  # SEAL's CoeffModulus::Create limits
_MIN_HEADROOM_BITS = 10
GUARD_SLOTS = 4  # zeros every contribution encrypts after [w*x, w]
GUARD_TOLERANCE = 2.0 ** -10  # largest |guard| of an honest sum (CKKS error ~1e-9 per contribution)


@dataclass(frozen=True)
class CKKSParams:
    """A CKKS parameter set: ring degree N, coefficient-modulus prime sizes (last = special prime), scale 2^bits."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(int(b) for b in self.coeff_mod_bit_sizes))
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        if not isinstance(n, int) or n not in MAX_COEFF_BITS:
            raise ConfigurationError(f"poly_modulus_degree must be a power of two in {sorted(MAX_COEFF_BITS)}, got {n}")
        if len(bits) < 2:
            raise ConfigurationError("need at least two primes: one for data and the special key-switching prime")
        if not all(_MIN_PRIME_BITS <= b <= _MAX_PRIME_BITS for b in bits):
            raise ConfigurationError(f"every prime must have {_MIN_PRIME_BITS}..{_MAX_PRIME_BITS} bits, got {bits}")
        if sum(bits) > MAX_COEFF_BITS[n]:
            raise ConfigurationError(
                f"{self.name!r}: total coefficient modulus {sum(bits)} bits exceeds {MAX_COEFF_BITS[n]}, the 128-bit "
                f"security bound for N={n} (HomomorphicEncryption.org standard)")
        data = sum(bits[:-1])
        top = min(_MAX_PRIME_BITS, data - _MIN_HEADROOM_BITS)
        if not isinstance(self.scale_bits, int) or not _MIN_PRIME_BITS <= self.scale_bits <= top:
            raise ConfigurationError(f"scale_bits must be in [{_MIN_PRIME_BITS}, {top}] for {data} data bits (keeps "
                                     f"{_MIN_HEADROOM_BITS} bits of headroom), got {self.scale_bits}")

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the fresh-level modulus (every prime but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def scale(self) -> float:
        """Δ = 2^scale_bits, the scale of every fresh ciphertext."""
        return float(2 ** self.scale_bits)

    @property
    def fresh_value_bound(self) -> float:
        """Largest magnitude a slot of a decrypted sum of fresh (scale Δ) ciphertexts may reach."""
        return float(2 ** (self.data_bits - self.scale_bits - 2))

    @property
    def guard_soundness_bits(self) -> float:
        """-log2 of the chance that a uniform residual passes all guards: each guard is a sum of N uniform
        residues mod q (spread ``q/Δ·sqrt(N/24)``), within ``±GUARD_TOLERANCE`` of zero with probability about
        ``2·tolerance / (sqrt(2π)·spread)``."""
        spread = 2.0 ** (self.data_bits - self.scale_bits) * math.sqrt(self.poly_modulus_degree / 24)
        per_guard = 2 * GUARD_TOLERANCE / (math.sqrt(2 * math.pi) * spread)
        return -GUARD_SLOTS * math.log2(per_guard)


PARAMS: dict[str, CKKSParams] = {
    # 160/218 bits: 100 data bits at scale 2^40 leave 2^58 of range for a decrypted sum.
    "default": CKKSParams("default", 8192, (60, 40, 60), 40),
    # 109/109 bits: one 60-bit data prime and the 49-bit special prime: half the bytes of "default" per value.
    # Scale 2^40 gives ~1e-8 fresh error and 2^18 of headroom for the decrypted sum (fresh_value_bound).
    "add-only": CKKSParams("add-only", 4096, (60, 49), 40),
}


def resolve(params: str | CKKSParams) -> CKKSParams:
    """The vetted set called ``params``, or ``params`` itself (already validated at construction)."""
    if isinstance(params, CKKSParams):
        return params
    if params not in PARAMS:
        raise ConfigurationError(f"unknown CKKS parameter set {params!r}; choose one of {sorted(PARAMS)}")
    return PARAMS[params]


def _chain_bits(context: ts.Context) -> tuple[int, int, tuple[int, ...]]:
    """(N, total key-level bits, total bits at each data level from the first (fresh) to the last)."""
    sc = context.seal_context().data
    key = sc.key_context_data()
    levels, data = [], sc.first_context_data()
    while data is not None:
        levels.append(data.total_coeff_modulus_bit_count())
        data = data.next_context_data()
    return key.parms().poly_modulus_degree(), key.total_coeff_modulus_bit_count(), tuple(levels)


def params_of(context: ts.Context) -> CKKSParams:
    """The parameter set a CKKS context uses (a vetted one by name when it matches); refuses insecure contexts."""
    if context.seal_context().data.key_context_data().parms().scheme() != ts.SCHEME_TYPE.CKKS.value:
        raise ConfigurationError("not a CKKS context")
    n, total, levels = _chain_bits(context)
    if n in MAX_COEFF_BITS and total > MAX_COEFF_BITS[n]:
        raise ConfigurationError(f"context modulus {total} bits exceeds the 128-bit bound for N={n}")
    if not levels:
        raise ConfigurationError("context has no data level")
    # SEAL drops primes from the end of the data chain, so successive differences recover each prime's size.
    bits = (levels[-1], *(levels[i] - levels[i + 1] for i in range(len(levels) - 2, -1, -1)), total - levels[0])
    scale = float(context.global_scale)
    scale_bits = int(round(math.log2(scale))) if scale > 0 else 0
    if scale != 2.0 ** scale_bits:
        raise ConfigurationError(f"context scale {scale} is not a power of two")
    for vetted in PARAMS.values():
        if (vetted.poly_modulus_degree, vetted.coeff_mod_bit_sizes, vetted.scale_bits) == (n, bits, scale_bits):
            return vetted
    return CKKSParams("custom", n, bits, scale_bits)


@dataclass(frozen=True, eq=False)
class PublicContext:
    """A key holder's public CKKS session: the context (public key only), its parameter set, the fresh-level
    ring, the X25519 sealing key, and ``context_id`` = SHA-256 of the public bundle."""

    context: ts.Context
    params: CKKSParams
    context_id: bytes
    layout: RingLayout
    parms_id: list[int]
    seal_key: bytes


def load_public_context(data: bytes, *, need_public_key: bool) -> PublicContext:
    """Parse a public bundle; a secret key raises KeyMisuseError, anything else unusable ConfigurationError."""
    context, seal_key = unbundle(data)
    try:
        ctx = ts.context_from(context)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError for any unparsable context
        raise ConfigurationError(f"public context does not deserialize: {exc}") from exc
    if ctx.is_private() or ctx.has_secret_key():
        raise KeyMisuseError("this context holds the secret key; only the key holder may have it. Pass "
                             "KeyHolder.public_context() instead")
    if need_public_key and not ctx.has_public_key():
        raise ConfigurationError("public context has no public key; clients cannot encrypt")
    params = params_of(ctx)
    layout, parms_id = ring_of(ctx, ntt=True)
    return PublicContext(ctx, params, hashlib.sha256(bytes(data)).digest(), layout, parms_id, seal_key)


def chunk_count(length: int, slots: int) -> int:
    """Ciphertexts holding ``length`` lanes, ``slots`` per ciphertext (arithmetic: nothing is allocated)."""
    return -(-length // slots)


def chunk_lengths(length: int, slots: int) -> list[int]:
    """Lengths of the chunks holding ``length`` values, ``slots`` per ciphertext."""
    if length < 1:
        raise MalformedMessageError(f"vector length must be >= 1, got {length}")
    full, rest = divmod(length, slots)
    return [slots] * full + ([rest] if rest else [])
