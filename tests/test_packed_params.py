"""Packed BFV lane layout: the headroom/noise invariants of PackedParams, packing against an independent
per-lane computation, and no carry or noise overflow for the worst-case sum of max_cohort contributions."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigurationError, MalformedMessageError
from secagg.hazmat import rlwe
from secagg.packed import PackedAggregate, PackedKeyHolder, PackedParams
from secagg.packed.params import NOISE_MARGIN_BITS, load_public_context, pack, unpack
from secagg.roles import AGGREGATOR


def _is_prime(t: int) -> bool:
    if t < 2:
        return False
    d, r = t - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic for t < 3.3e24
        x = pow(a, d, t)
        if x in (1, t - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, t)
            if x == t - 1:
                break
        else:
            return False
    return True


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 1 << 14), st.integers(10, 24))
def test_layout_invariants(max_cohort: int, min_bits: int) -> None:
    try:
        p = PackedParams(max_cohort=max_cohort, min_value_bits=min_bits)
    except ConfigurationError:
        # refused only when not even one lane of min_bits fits beside the headroom and noise budget
        h = (max_cohort - 1).bit_length()
        assert (60 - 7 - NOISE_MARGIN_BITS) - 1 - 2 * h < min_bits
        return
    h, b, k, L = p.headroom_bits, p.value_bits, p.lanes, p.lane_bits
    assert 2 ** (h - 1) < max_cohort <= 2 ** h and L == b + h and b >= min_bits
    assert max_cohort * (2 ** b - 1) < 2 ** L                    # a lane sum never carries
    assert p.plain_bits + h <= 60 - 7 - NOISE_MARGIN_BITS        # noise budget left after max_cohort additions
    t = p.plain_modulus
    assert t.bit_length() == p.plain_bits and t > 2 ** (k * L) - 1 and t % (2 * 4096) == 1 and _is_prime(t)
    if b < 32:  # k is maximal: one more lane would leave fewer than min_bits
        assert ((60 - 7 - NOISE_MARGIN_BITS) - 1 - (k + 2) * h) // (k + 1) < min_bits


def test_cohort_beyond_the_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        PackedParams(max_cohort=(1 << 14) + 1)
    with pytest.raises(ConfigurationError):
        PackedParams(max_cohort=1 << 14, min_value_bits=32)
    with pytest.raises(ConfigurationError):
        PackedParams(max_cohort=1)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 2000), st.integers(1, 20000), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_sum_of_packed_slots_unpacks_to_lane_sums(max_cohort: int, count: int, m: int, seed: int) -> None:
    p = PackedParams(max_cohort=max_cohort)
    m = min(m, max_cohort)
    rng = np.random.default_rng(seed)
    lanes = rng.integers(0, 2 ** p.value_bits, size=(m, count), dtype=np.uint64)
    lanes[0, : min(count, 5)] = 2 ** p.value_bits - 1
    total = sum(pack(row, p) for row in lanes)  # integer slot sums (all below t)
    assert total.shape == (p.slots_for(count),) and int(total.max()) < p.plain_modulus
    assert np.array_equal(unpack(total, count, p), lanes.sum(axis=0).astype(np.int64))
    with pytest.raises(MalformedMessageError):
        unpack(total, count + p.lanes, p)


@pytest.mark.parametrize("max_cohort", [2, 32, 100, 1000, 4096])
def test_worst_case_sum_of_max_cohort_decrypts_exactly(max_cohort: int) -> None:
    """All lanes at 2^b - 1, one ciphertext added to itself max_cohort times (noise adds coherently: the worst
    case), decrypted through the key holder: every lane is exactly max_cohort * (2^b - 1)."""
    p = PackedParams(max_cohort=max_cohort)
    kh = PackedKeyHolder(p, min_contributors=2)
    pub = load_public_context(kh.public_context(), p, need_public_key=True)
    count = p.lanes * p.slots
    top = np.full(count, 2 ** p.value_bits - 1, dtype=np.uint64)
    one = ts.bfv_vector(pub.context, pack(top, p).tolist())
    acc = one.copy()
    for _ in range(max_cohort - 1):
        acc += one
    budget = sealapi.Decryptor(kh._context.seal_context().data, kh._context.secret_key().data)
    assert budget.invariant_noise_budget(acc.ciphertext()[0]) >= 1
    # through the raw residues the key holder decrypts (pads cancel exactly, so they change no noise)
    raw = rlwe.to_tenseal(rlwe.extract(acc.serialize(), pub.layout), pub.layout, parms_id=pub.parms_id, scale=None,
                          length=p.slots)
    slots = np.mod(np.asarray(ts.bfv_vector_from(kh._context, raw).decrypt(), dtype=np.int64),
                   p.plain_modulus).astype(np.uint64)
    assert np.all(unpack(slots, count, p) == max_cohort * (2 ** p.value_bits - 1))


def test_key_holder_refuses_an_aggregate_beyond_max_cohort() -> None:
    p = PackedParams(max_cohort=4)
    kh = PackedKeyHolder(p)
    pub = load_public_context(kh.public_context(), p, need_public_key=True)
    ct = ts.bfv_vector(pub.context, [1, 2, 3]).serialize()
    agg = PackedAggregate(round_id=0, session_id=kh.session_id, dim=1, contributors=tuple(range(5)), first=0,
                          tags=(), chunks=(ct,))
    with pytest.raises(MalformedMessageError, match="max_cohort"):
        kh.receive(AGGREGATOR, agg.to_bytes())
    assert kh.finalized_rounds == frozenset()
