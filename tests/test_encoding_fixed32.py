"""The integer stochastic-rounding path of FixedPoint.encode (rings of at most 32 bits), bit for bit.

The CSPRNG words are replaced by known ones so the output can be compared with an independent float64
computation: level ``q = floor(x * factor * scale)``, rounded up exactly when ``u >= 2^32 - ceil(frac * 2^32)``
(probability ``ceil(frac * 2^32) / 2^32`` for a uniform 32-bit ``u``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import secagg.encoding as encoding
from secagg.encoding import FixedPoint
from secagg.errors import MalformedUpdateError


class _KnownWords:
    """Stands in for U32Stream: hands out ``words`` in order (block by block, as the encoder asks)."""

    words = np.zeros(0, dtype=np.uint32)

    def __init__(self, block: int) -> None:
        self._pos = 0

    def next(self, count: int) -> np.ndarray:
        out = self.words[self._pos:self._pos + count]
        self._pos += count
        assert out.size == count, "the encoder asked for more words than values"
        return out


@pytest.fixture
def known_words(monkeypatch):
    monkeypatch.setattr(encoding, "U32Stream", _KnownWords)
    return _KnownWords


def _reference(codec: FixedPoint, x: np.ndarray, factor: float, u: np.ndarray) -> np.ndarray:
    """floor(s) + [u >= 2^32 - ceil(frac(s) * 2^32)] mod 2^ring_bits, with s = x * (factor * scale) in float64."""
    s = x.astype(np.float64) * (factor * codec.scale)
    q = np.floor(s)
    threshold = np.ceil((s - q) * 4294967296.0)  # exact: frac has at most 53 significant bits
    level = q.astype(np.int64) + (u.astype(np.float64) >= 4294967296.0 - threshold)
    return (level.astype(np.uint64) & np.uint64((1 << codec.ring_bits) - 1)).astype(codec.dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ring_bits=st.sampled_from([16, 24, 32]), n=st.integers(1, 300), dim=st.integers(1, 3 * (1 << 15) + 7),
       factor=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1))
def test_matches_float_reference_bit_for_bit(known_words, ring_bits, n, dim, factor, seed) -> None:
    """Across block boundaries (dims that are not multiples of the block) and for every ring of <= 32 bits.
    (The patched stream class stays in place across examples; each example sets its own words.)"""
    codec = FixedPoint(ring_bits=ring_bits, clip=1.0, n_clients=n, min_precision_bits=4)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, dim)
    x[rng.integers(0, dim, size=min(dim, 8))] = rng.integers(-3, 4, size=min(dim, 8)) / codec.scale  # on a level
    known_words.words = rng.integers(0, 2**32, size=dim, dtype=np.uint32)
    out = np.full(dim, 5, dtype=codec.dtype)
    assert codec.encode(x, factor=factor, out=out) is out
    assert np.array_equal(out, _reference(codec, x, factor, known_words.words))


def test_round_up_exactly_at_the_fraction_threshold(known_words) -> None:
    """x = q + t/2^32 (t not necessarily an integer): u = 2^32 - ceil(t) rounds up, one less does not, so the
    probability of rounding up is ceil(t)/2^32."""
    max_level = FixedPoint(ring_bits=32, n_clients=4).max_level
    codec = FixedPoint(ring_bits=32, clip=(max_level - 1) / 2**20, n_clients=4)
    assert codec.scale == 2**20  # a power of two: the values below scale exactly
    values, words, expected = [], [], []
    for q, t in ((10, Fraction(1)), (10, Fraction(3 << 30)), (-7, Fraction(1 << 31)), (0, Fraction(2**32 - 1)),
                 (3, Fraction(3, 2)), (-2, Fraction(2**31 + 1, 4)), (0, Fraction(1, 8))):
        x = float((q + t / 2**32) / 2**20)
        assert Fraction(x) * codec.scale == q + t / 2**32
        for u, up in ((2**32 - math.ceil(t), 1), (2**32 - math.ceil(t) - 1, 0)):
            values.append(x)
            words.append(u)
            expected.append((q + up) % 2**32)
    known_words.words = np.array(words, dtype=np.uint32)
    assert codec.encode(np.array(values)).tolist() == expected


def test_float32_and_integer_inputs_widen_exactly(known_words) -> None:
    codec = FixedPoint(ring_bits=32, clip=100.0, n_clients=3)
    rng = np.random.default_rng(3)
    x32 = rng.uniform(-1, 1, 40_000).astype(np.float32)
    xi = rng.integers(-100, 101, 40_000)
    for x in (x32, xi):
        known_words.words = rng.integers(0, 2**32, size=x.size, dtype=np.uint32)
        got = codec.encode(x, factor=0.75)
        assert np.array_equal(got, _reference(codec, x.astype(np.float64), 0.75, known_words.words))


@pytest.mark.parametrize("where", [0, (1 << 15) - 1, 1 << 15, 100_000 - 1])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1.5])
def test_bad_value_in_any_block_raises(where, bad) -> None:
    codec = FixedPoint(ring_bits=32, clip=1.0, n_clients=3)
    x = np.zeros(100_000)
    x[where] = bad
    match = "clip range" if math.isfinite(bad) else "1 NaN/Inf"
    with pytest.raises(MalformedUpdateError, match=match):
        codec.encode(x)
    if not math.isfinite(bad):
        with pytest.raises(MalformedUpdateError, match=match):
            encoding.validate_update(x)


def test_clip_policy_saturates_at_the_range_in_integers(known_words) -> None:
    codec = FixedPoint(ring_bits=32, clip=1.0, n_clients=3, out_of_range="clip")
    known_words.words = np.array([0, 2**32 - 1, 0, 2**32 - 1], dtype=np.uint32)
    got = codec.encode(np.array([5.0, 5.0, -5.0, -5.0])).astype(np.int64)
    top = codec.max_level - 1  # clip * scale is an exact level: no rounding up beyond it
    assert got.tolist() == [top, top, 2**32 - top, 2**32 - top]


def test_real_stream_is_unbiased_at_a_third() -> None:
    """With the real CSPRNG: Bernoulli(1/3) rounding, mean error ~0 (5 sigma) over 300k values."""
    codec = FixedPoint(ring_bits=32, clip=1.0, n_clients=2)
    x = np.full(300_000, (1234 + 1 / 3) / codec.scale)
    levels = codec.encode(x).astype(np.int64)
    assert set(np.unique(levels)) == {1234, 1235}
    assert abs(float(levels.mean()) - (1234 + 1 / 3)) < 5 * math.sqrt(2 / 9 / x.size)
