"""Raw RLWE residues (secagg.hazmat.rlwe): the wire form round-trips and refuses what is not reduced or not the
right size; pads are exactly uniform, reproducible block by block, and cancel exactly; TenSEAL ciphertexts go
in and out of the raw form without changing what they decrypt to."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from secagg.errors import MalformedMessageError
from secagg.hazmat import rlwe
from secagg.he_round import ring_of

# SEAL-like primes just below powers of two, and one far below 2^60 (so that half of all draws are redrawn)
LAYOUTS = [rlwe.RingLayout(32, ((1 << 60) - 93, (1 << 40) - 87), True),
           rlwe.RingLayout(64, ((1 << 59) + 9,), False)]


def _residues(layout: rlwe.RingLayout, chunks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, q, size=(chunks, 2, layout.degree), dtype=np.uint64) for q in layout.moduli],
                    axis=2)


@settings(max_examples=30, deadline=None)
@given(which=st.integers(0, len(LAYOUTS) - 1), chunks=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip_and_size(which: int, chunks: int, seed: int) -> None:
    layout = LAYOUTS[which]
    res = _residues(layout, chunks, seed)
    res[0, 0, 0, 0] = layout.moduli[0] - 1  # the largest residue survives
    packed = rlwe.pack(res, layout)
    assert len(packed) == chunks and all(len(p) == layout.packed_bytes for p in packed)
    assert np.array_equal(rlwe.unpack(packed, layout), res)


def test_unpack_refuses_wrong_sizes_and_unreduced_residues() -> None:
    layout = LAYOUTS[0]
    good = [bytes(p) for p in rlwe.pack(_residues(layout, 2, 1), layout)]
    for bad in ([good[0][:-1], good[1]], [good[0] + b"\0", good[1]], [b""]):
        with pytest.raises(MalformedMessageError, match="bytes"):
            rlwe.unpack(bad, layout)
    for prime, q in enumerate(layout.moduli):
        res = _residues(layout, 1, 2)
        res[0, 1, prime, 3] = q  # one residue equal to its modulus
        with pytest.raises(MalformedMessageError, match="not reduced"):
            rlwe.unpack(rlwe.pack(res, layout), layout)


@settings(max_examples=20, deadline=None)
@given(which=st.integers(0, len(LAYOUTS) - 1), chunks=st.integers(1, 40), key=st.binary(min_size=16, max_size=16))
def test_a_pad_cancels_exactly_and_is_reproducible(which: int, chunks: int, key: bytes) -> None:
    layout = LAYOUTS[which]
    res = _residues(layout, chunks, 7)[:, 0]
    padded = res.copy()
    rlwe.apply_pad(padded, key, layout)
    assert not np.array_equal(padded, res) and all(int(padded[:, j].max()) < q for j, q in enumerate(layout.moduli))
    again = res.copy()
    rlwe.apply_pad(again, key, layout)
    assert np.array_equal(again, padded)  # the key holder computes the same pad
    split = res.copy()
    cut = chunks // 2
    rlwe.apply_pad(split[:cut], key, layout)
    rlwe.apply_pad(split[cut:], key, layout, first=cut)
    assert np.array_equal(split, padded)  # whatever blocks it is applied in
    rlwe.apply_pad(padded, key, layout, subtract=True)
    assert np.array_equal(padded, res)


def test_pads_are_uniform_including_the_redraw_path() -> None:
    """Chi-square of the pad's top 8 bits (256 bins) for a prime just below 2^60 and one (2^59 + 9, 60 bits)
    where every other draw is redrawn: the redraws must leave the distribution uniform on [0, q)."""
    for layout in LAYOUTS:
        zero = np.zeros((256, len(layout.moduli), layout.degree), dtype=np.uint64)
        rlwe.apply_pad(zero, bytes(range(16)), layout)
        for j, q in enumerate(layout.moduli):
            top = (zero[:, j].astype(np.float64) / q * 256).astype(np.int64).ravel()
            p = chisquare(np.bincount(top, minlength=256)).pvalue
            assert p > 1e-6, (layout, j, p)
    skewed = np.zeros((256, 1, 64), dtype=np.uint64)
    rlwe.apply_pad(skewed, bytes(16), rlwe.RingLayout(64, ((1 << 59) + 9,), False))
    masked = (skewed & np.uint64((1 << 60) - 1)).astype(np.float64) / (1 << 60)
    assert chisquare(np.bincount((masked * 256).astype(np.int64).ravel(), minlength=256)).pvalue < 1e-30  # power


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_tenseal_ciphertexts_survive_the_raw_form(scheme: str) -> None:
    if scheme == "ckks":
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
        ctx.global_scale = 2**40
        vec = ts.ckks_vector(ctx, [0.5, -1.25, 3.0])
    else:
        ctx = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[60, 49])
        vec = ts.bfv_vector(ctx, [5, 7, 11])
    layout, parms_id = ring_of(ctx, ntt=scheme == "ckks")
    res = rlwe.extract(vec.serialize(), layout)
    back = rlwe.unpack(rlwe.pack(res[None].copy(), layout), layout)[0]
    raw = rlwe.to_tenseal(back, layout, parms_id=parms_id, scale=2.0**40 if scheme == "ckks" else None, length=3)
    load = ts.ckks_vector_from if scheme == "ckks" else ts.bfv_vector_from
    assert np.allclose(load(ctx, raw).decrypt(), vec.decrypt(), atol=1e-6)
    with pytest.raises(MalformedMessageError):
        rlwe.extract(vec.serialize()[:-50], layout)
    with pytest.raises(MalformedMessageError):
        rlwe.extract(b"\x0a\x01\x03", layout)
