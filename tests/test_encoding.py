"""Fixed-point encoding: exact sums in the ring, unbiased stochastic rounding, refusals instead of overflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg.encoding import FixedPoint, flatten, ring_dtype, unflatten, validate_update
from secagg.errors import ConfigurationError, MalformedUpdateError


def _ring_sum(codec: FixedPoint, encoded: list[np.ndarray]) -> np.ndarray:
    total = np.zeros(encoded[0].shape, dtype=np.uint64)
    for e in encoded:
        total += e.astype(np.uint64)
    return total & np.uint64((1 << codec.ring_bits) - 1) if codec.ring_bits < 64 else total


@settings(max_examples=60, deadline=None)
@given(
    ring_bits=st.sampled_from([16, 24, 32, 48, 64]),
    n=st.integers(1, 64),
    clip=st.floats(0.01, 100.0),
    dim=st.integers(1, 50),
    rounding=st.sampled_from(["stochastic", "deterministic"]),
    data=st.data(),
)
def test_sum_decodes_within_resolution(ring_bits, n, clip, dim, rounding, data) -> None:
    try:
        codec = FixedPoint(ring_bits=ring_bits, clip=clip, n_clients=n, rounding=rounding)
    except ConfigurationError:
        assert math.log2(((1 << (ring_bits - 1)) - 1) // n) < 8
        return
    xs = [data.draw(arrays(np.float64, dim, elements=st.floats(-clip, clip))) for _ in range(n)]
    encoded = [codec.encode(x) for x in xs]
    assert all(e.dtype == ring_dtype(ring_bits) for e in encoded)
    decoded = codec.decode_sum(_ring_sum(codec, encoded))
    per_client = codec.resolution if rounding == "stochastic" else codec.resolution / 2
    assert np.all(np.abs(decoded - np.sum(xs, axis=0)) <= n * per_client * (1 + 1e-9) + 1e-12)


def _max_clients(ring_bits: int) -> int:
    """Most clients a ring keeps 8 bits of resolution for: floor((2^(k-1) - 1) / n) >= 256."""
    return ((1 << (ring_bits - 1)) - 1) // 256


@settings(max_examples=40, deadline=None)
@given(ring_bits=st.sampled_from([16, 32, 64]), data=st.data())
def test_extremes_never_wrap(ring_bits, data) -> None:
    n = data.draw(st.integers(1, min(200, _max_clients(ring_bits))))
    codec = FixedPoint(ring_bits=ring_bits, clip=1.0, n_clients=n)
    with pytest.raises(ConfigurationError):  # one client more than the ring can hold without losing resolution
        FixedPoint(ring_bits=ring_bits, clip=1.0, n_clients=_max_clients(ring_bits) + 1)
    for sign in (1.0, -1.0):
        xs = [np.full(4, sign) for _ in range(n)]
        decoded = codec.decode_sum(_ring_sum(codec, [codec.encode(x) for x in xs]))
        assert np.all(np.sign(decoded) == sign)
        assert np.allclose(decoded, sign * n, atol=n * codec.resolution)


def test_stochastic_rounding_is_unbiased() -> None:
    codec = FixedPoint(ring_bits=16, clip=1.0, n_clients=2, rounding="stochastic")
    # a value a third of the way between two levels
    level = 1.0 / codec.scale
    x = np.full(200_000, 10 * level + level / 3)
    decoded = codec.decode_sum(codec.encode(x).astype(np.uint64))
    # Bernoulli(1/3) rounding: mean error 0, std of the mean = level * sqrt(2/9 / N)
    err = (decoded.mean() - x[0]) / level
    assert abs(err) < 5 * math.sqrt((2 / 9) / x.size)
    assert set(np.unique(np.round(decoded / level))) == {10.0, 11.0}


def test_overflowing_configuration_refused() -> None:
    with pytest.raises(ConfigurationError, match="overflow"):
        FixedPoint(ring_bits=16, n_clients=1000)
    with pytest.raises(ConfigurationError):
        FixedPoint(ring_bits=7)
    with pytest.raises(ConfigurationError):
        FixedPoint(clip=float("nan"))


def test_out_of_range_raises_or_clips_explicitly() -> None:
    strict = FixedPoint(clip=1.0, n_clients=3)
    with pytest.raises(MalformedUpdateError, match="clip range"):
        strict.encode(np.array([0.5, 1.5]))
    lenient = FixedPoint(clip=1.0, n_clients=3, out_of_range="clip", rounding="deterministic")
    assert np.allclose(lenient.decode_sum(lenient.encode(np.array([0.5, 1.5]))), [0.5, 1.0], atol=1e-8)


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([np.inf]), np.zeros((2, 2)), np.array([]),
                                 np.array(["a"]), [1.0, 2.0]])
def test_validate_update_rejects(bad) -> None:
    with pytest.raises(MalformedUpdateError):
        validate_update(bad)


def test_validate_update_length() -> None:
    with pytest.raises(MalformedUpdateError, match="expected 3"):
        validate_update(np.zeros(4), dim=3)


def test_flatten_round_trip() -> None:
    arrays_ = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7.0]), "c": np.zeros((0, 4))}
    vec, spec = flatten(arrays_)
    assert vec.shape == (7,) and spec.size == 7
    back = unflatten(vec, spec)
    assert list(back) == ["a", "b", "c"]
    for k in arrays_:
        assert back[k].dtype == arrays_[k].dtype and np.array_equal(back[k], arrays_[k])
    with pytest.raises(MalformedUpdateError):
        unflatten(vec[:-1], spec)


@settings(max_examples=25, deadline=None)
@given(ring_bits=st.sampled_from([16, 32, 64]), dim=st.integers(1, 70_000), factor=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_blockwise_encode_with_factor_matches_elementwise_reference(ring_bits, dim, factor, seed) -> None:
    """Across block boundaries: deterministic encode(x, factor) is rint(factor*x*scale) mod 2^k, written in place."""
    codec = FixedPoint(ring_bits=ring_bits, clip=1.0, n_clients=3, rounding="deterministic")
    x = np.random.default_rng(seed).uniform(-1, 1, dim)
    out = np.full(dim, 7, dtype=codec.dtype)
    got = codec.encode(x, factor=factor, out=out)
    ref = np.rint(x * (factor * codec.scale)).astype(np.int64).astype(np.uint64)
    if ring_bits < 64:
        ref &= np.uint64((1 << ring_bits) - 1)
    assert got is out and np.array_equal(out.astype(np.uint64), ref)


def test_stochastic_encode_rounds_to_a_neighbour_level_in_every_block() -> None:
    codec = FixedPoint(ring_bits=32, clip=1.0, n_clients=4, rounding="stochastic")
    x = np.random.default_rng(1).uniform(-1, 1, 100_000)
    dec = codec.decode_sum(codec.encode(x, factor=0.5))
    err = (dec - 0.5 * x) * codec.scale
    assert np.all(np.abs(err) < 1) and abs(float(err.mean())) < 0.01  # ±1 level, unbiased over 1e5 values
    assert len(np.unique(err > 0)) == 2  # both directions occur


def test_factor_range_check_and_out_validation() -> None:
    codec = FixedPoint(ring_bits=32, clip=1.0, n_clients=2)
    with pytest.raises(MalformedUpdateError):
        codec.encode(np.array([0.6]), factor=2.0)  # 1.2 > clip
    with pytest.raises(MalformedUpdateError):
        codec.encode(np.array([0.1]), factor=math.inf)
    with pytest.raises(ValueError):
        codec.encode(np.array([0.1, 0.2]), out=np.empty(3, dtype=codec.dtype))
