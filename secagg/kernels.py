"""Fused numeric kernels (numba): one pass over a block where numpy needs seven.

Written by hand because no maintained library fuses these loops. The fixed-point encoding of :mod:`secagg.encoding`:
numpy does the range check, scaling, ceiling, integer conversion, the random offset and the high-word extraction in
separate passes over each block (at D = 1M: 6.3 AES-CTR passes of 4·D bytes' worth of time; with this kernel about 2,
of which 1.2 is the AES stream of random words it is given). Invariant: :func:`encode_fixed32_block` writes exactly
the formula in its docstring (``tests/test_encoding_fixed32.py`` checks the encoder bit for bit against an independent
float reference with hypothesis), and it reports every value it could not vouch for, so the caller refuses the block
after the fact. The HE tags of :mod:`secagg.he_tags`: numpy's integer matrix product has no BLAS and needs a shifted,
masked copy of the residues per limb (0.20 s of a 1.4 s CKKS client at D = 1M); the kernel reads each residue row from
cache once per limb and tag (12 ms there), with the same exact uint64 sums (``tests/test_he_tags.py`` checks it
against Python integers). The pads of :mod:`secagg.hazmat.rlwe`: masking the draw, the rejection test and the modular
add or subtract in one pass instead of six (the key holder removes n pads).

Compiled on first use and cached next to this file (``cache=True``: about 0.4 s to load in a fresh process);
``nogil``, so threads encoding different updates run in parallel.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["encode_fixed32_block", "tag_columns", "pad_block"]

_SAFE = float(2**63 - 2**33)  # |ceil(s) + u| < 2^63 for every |s| <= _SAFE and 32-bit u


_ABS = np.int64(0x7FFFFFFFFFFFFFFF)  # the bits of |x| of a float64 x; as int64 they order like |x| does
_INF = np.int64(0x7FF0000000000000)  # |x| bits at or above it: Inf or NaN


@numba.njit(cache=True, nogil=True)
def _encode(v, bits, mult, limit, uniforms, out):  # pragma: no cover - compiled; exercised through the wrapper
    worst, bad = np.int64(0), 0
    for i in range(v.size):  # branch-free, integer reductions: LLVM vectorizes it (3x the branchy loop)
        a = bits[i] & _ABS
        bad += a >= _INF
        worst = max(worst, a)
        x = v[i] if a < _INF else 0.0
        s = min(max(x * mult, -limit), limit)
        f = np.int64(np.ceil(s)) + np.int64(uniforms[i])
        out[i] = np.uint32((f >> 32) & 0xFFFFFFFF)
    return worst, bad


def encode_fixed32_block(v: np.ndarray, mult: float, bound: float, clip: bool, uniforms: np.ndarray,
                         out: np.ndarray) -> tuple[float, int]:
    """``out[i] = floor((ceil(v[i]·mult) + uniforms[i]) / 2^32) mod 2^32`` for each finite ``v[i]``
    (``clip``: ``v[i]·mult`` clamped to ``±bound`` first). Returns (max |v[i]|, the number of NaN/Inf values);
    the maximum means nothing when the count is not 0, a NaN/Inf leaves its ``out[i]`` unspecified, and so does a
    value whose product is beyond 2^63 − 2^33, so a caller must refuse the update when the count is not 0 or the
    maximum is out of range."""
    x = np.ascontiguousarray(v, dtype=np.float64)
    limit = float(bound) if clip else _SAFE
    worst, bad = _encode(x, x.view(np.int64), np.float64(mult), np.float64(limit), uniforms, out)
    return float(np.array(worst, dtype=np.int64).view(np.float64)), int(bad)


@numba.njit(cache=True, nogil=True)
def _tag_columns(res, prime, gamma_t, beta, limbs, limb_bits, sub_bits, out):  # pragma: no cover - compiled
    chunks, polys, _, n = res.shape
    tags = gamma_t.shape[0]
    mask = np.uint64((1 << limb_bits) - 1)
    sub_mask = np.uint64((1 << sub_bits) - 1)
    for ch in range(chunks):
        for p in range(polys):
            row = res[ch, p, prime]
            i = ch * polys + p
            for a in range(limbs):
                shift = np.uint64(limb_bits * a)
                for t in range(tags):
                    g = gamma_t[t]
                    s = np.uint64(0)
                    for c in range(n):
                        s += ((row[c] >> shift) & mask) * g[c]
                    b = beta[i, t]
                    for a2 in range(4):
                        out[a, a2, t] += ((s >> np.uint64(sub_bits * a2)) & sub_mask) * b


def tag_columns(residues: np.ndarray, prime: int, gamma_t: np.ndarray, beta: np.ndarray, *, limbs: int,
                limb_bits: int, sub_bits: int) -> np.ndarray:
    """``out[a, a2, t] = Σ_i β[i, t] · ((Σ_c limb_a(R[i, c]) · γ_t[t, c]) >> sub_bits·a2 & sub_mask)`` in uint64,
    over the rows ``i`` of prime ``prime`` of ``residues`` (``(chunks, polys, L, N)``, row ``i = chunk·polys +
    poly``), where ``limb_a(x) = x >> limb_bits·a & (2^limb_bits − 1)``. Exact (no wrap) when the caller sized
    ``γ``, ``β`` and the limbs so every inner sum and every column sum stays below 2^64 (:mod:`secagg.he_tags`)."""
    if residues.ndim != 4 or residues.dtype != np.uint64 or gamma_t.shape != (gamma_t.shape[0], residues.shape[3]) \
            or beta.shape != (residues.shape[0] * residues.shape[1], gamma_t.shape[0]):
        raise ValueError("tag_columns: residues (chunks, polys, L, N), gamma_t (tags, N), beta (rows, tags)")
    out = np.zeros((limbs, 4, gamma_t.shape[0]), dtype=np.uint64)
    _tag_columns(np.ascontiguousarray(residues), prime, np.ascontiguousarray(gamma_t, dtype=np.uint64),
                 np.ascontiguousarray(beta, dtype=np.uint64), limbs, limb_bits, sub_bits, out)
    return out


@numba.njit(cache=True, nogil=True)
def _pad_block(block, words, mask, q, subtract, bad):  # pragma: no cover - compiled; exercised through the wrapper
    rows, n = block.shape
    count = 0
    for r in range(rows):
        for c in range(n):
            p = words[r, c] & mask
            if p >= q:
                bad[count] = r * n + c
                count += 1
                continue
            v = block[r, c] + (q - p if subtract else p)  # < 2q < 2^63
            block[r, c] = v - q if v >= q else v
    return count


def pad_block(block: np.ndarray, words: np.ndarray, bits: int, q: int, *, subtract: bool) -> np.ndarray:
    """In place, for every ``(r, c)``: ``p = words[r, c] mod 2^bits``; if ``p < q``, ``block[r, c] = (block[r, c]
    ± p) mod q``, else ``block[r, c]`` is left as it is. Returns the flat indices ``r·n + c`` of the draws left out
    (``p >= q``, in order), which the caller redraws and applies. ``block`` (uint64, reduced mod ``q``) may be a
    strided view; ``words`` has its shape."""
    if block.dtype != np.uint64 or block.ndim != 2 or words.shape != block.shape or not 2 <= q < 1 << bits <= 1 << 62:
        raise ValueError("pad_block: uint64 block (rows, n) reduced mod q < 2^bits <= 2^62, words of its shape")
    bad = np.empty(block.size, dtype=np.int64)
    count = _pad_block(block, np.ascontiguousarray(words, dtype=np.uint64), np.uint64((1 << bits) - 1),
                       np.uint64(q), bool(subtract), bad)
    return bad[:count]
