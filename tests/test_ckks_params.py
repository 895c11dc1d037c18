"""CKKS parameter sets: the 128-bit HomomorphicEncryption.org bound is enforced, and contexts are identified."""

from __future__ import annotations

import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.ckks import PARAMS, CKKSParams, KeyHolder
from secagg.ckks.params import chunk_count, chunk_lengths, load_public_context, params_of, resolve
from secagg.errors import ConfigurationError, MalformedMessageError

# HomomorphicEncryption.org security standard (Nov 2018), Table 1, classical 128-bit, ternary secret: log2(q).
STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def test_vetted_sets() -> None:
    d, a = PARAMS["default"], PARAMS["add-only"]
    assert (d.poly_modulus_degree, d.coeff_mod_bit_sizes, d.scale_bits) == (8192, (60, 40, 60), 40)
    assert (a.poly_modulus_degree, a.coeff_mod_bit_sizes, a.scale_bits) == (4096, (60, 49), 40)
    assert d.slots == 4096 and a.slots == 2048
    assert d.total_bits == 160 <= STANDARD_128[8192] and a.total_bits == 109 <= STANDARD_128[4096]
    assert (d.data_bits, a.data_bits) == (100, 60)
    assert a.fresh_value_bound == 2.0**18 and d.fresh_value_bound == 2.0**58
    # a residual pad passes all four guards with probability below 2^-128 for both sets
    assert d.guard_soundness_bits > 290 and 128 < a.guard_soundness_bits < 140
    assert resolve("default") is d and resolve(a) is a
    with pytest.raises(ConfigurationError):
        resolve("fast")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(STANDARD_128)), st.lists(st.integers(20, 60), min_size=2, max_size=8))
def test_security_bound_is_enforced(n: int, bits: list[int]) -> None:
    scale = min(40, sum(bits[:-1]) - 10)
    if sum(bits) <= STANDARD_128[n] and scale >= 20:
        p = CKKSParams("t", n, tuple(bits), scale)
        assert p.total_bits == sum(bits) and p.slots == n // 2
        assert p.fresh_value_bound == 2.0 ** (sum(bits[:-1]) - scale - 2)
    else:
        with pytest.raises(ConfigurationError):
            CKKSParams("t", n, tuple(bits), scale)


@pytest.mark.parametrize("n,bits,scale", [
    (8192, (60, 60, 60, 60), 40),          # 240 > 218 bits: insecure
    (4096, (60, 50), 40),                  # 110 > 109
    (16384, (60,) * 7 + (60,), 40),        # 480 > 438
    (1024, (27,), 20),                     # one prime: no special prime
    (6000, (60, 40, 60), 40),              # not a power of two
    (65536, (60, 40, 60), 40),             # outside the standard's table
    (8192, (61, 40, 60), 40),              # prime over 60 bits
    (8192, (60, 40, 19), 40),              # prime under 20 bits
    (4096, (60, 49), 51),                  # scale leaves < 10 bits of headroom in 60 data bits
    (32768, (60,) * 14, 61),               # scale over 60 bits
    (8192, (60, 40, 60), 12),              # scale too small
])
def test_unsafe_sets_refused(n, bits, scale) -> None:
    with pytest.raises(ConfigurationError):
        CKKSParams("bad", n, bits, scale)


def test_keyholder_refuses_unsafe_custom_set_and_accepts_a_safe_one() -> None:
    with pytest.raises(ConfigurationError):
        KeyHolder(CKKSParams("too-big", 8192, (60, 60, 60, 60), 40))
    custom = CKKSParams("mine", 8192, (60, 40, 40, 60), 40)
    pc = load_public_context(KeyHolder(custom).public_context(), need_public_key=True)
    assert pc.params.coeff_mod_bit_sizes == (60, 40, 40, 60) and pc.params.name == "custom"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_context_identifies_its_vetted_set(name: str) -> None:
    pc = load_public_context(KeyHolder(name).public_context(), need_public_key=True)
    assert pc.params is PARAMS[name] and len(pc.context_id) == 32


def test_context_scale_must_be_a_power_of_two() -> None:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    ctx.global_scale = 3 * 2**38
    with pytest.raises(ConfigurationError):
        params_of(ctx)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**6), st.sampled_from([2048, 4096]))
def test_chunk_layout(length: int, slots: int) -> None:
    parts = chunk_lengths(length, slots)
    assert sum(parts) == length and all(0 < p <= slots for p in parts) and parts[:-1] == [slots] * (len(parts) - 1)
    assert len(parts) == -(-length // slots) == chunk_count(length, slots)


def test_chunk_layout_refuses_empty() -> None:
    with pytest.raises(MalformedMessageError):
        chunk_lengths(0, 4096)
