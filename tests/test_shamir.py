"""Shamir sharing over GF(2^31-1): any t of n reconstruct, t-1 shares are uniform whatever the secret (chi-square),
and wrong, duplicate, too few or inconsistent shares are refused; the share codec validates sizes and ranges."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from secagg.errors import DecryptionError, MalformedMessageError
from secagg.hazmat.shamir import PRIME, Share, random_field_elements, reconstruct, split

ALPHA = 1e-6  # false-alarm rate of each chi-square test


@st.composite
def setups(draw):
    n = draw(st.integers(1, 20))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, PRIME - 1), min_size=n, max_size=n, unique=True))
    secret = draw(st.sampled_from([16, 32]).flatmap(lambda m: st.binary(min_size=m, max_size=m)))
    subset = draw(st.permutations(range(n)))[:draw(st.integers(t, n))]
    return t, xs, secret, subset


@settings(max_examples=60, deadline=None)
@given(setups())
def test_any_t_shares_reconstruct(setup) -> None:
    t, xs, secret, subset = setup
    shares = split(secret, t, xs)
    assert [s.x for s in shares] == xs
    assert reconstruct([shares[i] for i in subset], t, len(secret)) == secret
    via_bytes = [Share.from_bytes(shares[i].to_bytes()) for i in subset]
    assert reconstruct(via_bytes, t, len(secret)) == secret


@pytest.mark.parametrize("t", [2, 3])
def test_t_minus_1_shares_are_uniform_for_any_secret(t: int) -> None:
    """Joint distribution of t-1 shares, bucketed, for an all-zero and an all-0xff secret."""
    buckets, trials = 16 if t == 2 else 6, 3000
    for secret in (bytes(16), b"\xff" * 16):
        cells = []
        for _ in range(trials):
            ys = [s.y for s in split(secret, t, [3, 7, 11])[:t - 1]]
            idx = np.zeros(8, dtype=np.int64)
            for y in ys:
                idx = idx * buckets + y * buckets // PRIME
            cells.append(idx)
        counts = np.bincount(np.concatenate(cells), minlength=buckets ** (t - 1))
        assert chisquare(counts).pvalue > ALPHA


def test_random_field_elements_are_uniform_in_range() -> None:
    v = random_field_elements((200_000,))
    assert v.min() >= 0 and v.max() < PRIME
    assert chisquare(np.bincount(v * 64 // PRIME, minlength=64)).pvalue > ALPHA


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 6), which=st.integers(0, 5))
def test_a_random_wrong_share_is_refused(t: int, which: int) -> None:
    """A share replaced by random field values interpolates to limbs >= 2^16 except with prob. < 2^-240."""
    shares = split(os.urandom(32), t, range(1, t + 1))
    shares[which % t] = Share(shares[which % t].x, random_field_elements((16,)))
    with pytest.raises(DecryptionError):
        reconstruct(shares, t, 32)


def test_duplicate_too_few_and_inconsistent_shares_are_refused() -> None:
    shares = split(os.urandom(16), 3, [1, 2, 3, 4])
    with pytest.raises(DecryptionError):
        reconstruct([shares[0], shares[0], shares[1]], 3, 16)
    with pytest.raises(DecryptionError):
        reconstruct(shares[:2], 3, 16)
    with pytest.raises(DecryptionError):
        reconstruct(shares[:3], 3, 32)
    long = split(os.urandom(32), 3, [5, 6, 7])
    with pytest.raises(DecryptionError):
        reconstruct([shares[0], shares[1], long[0]], 3, 16)
    with pytest.raises(ValueError):
        split(os.urandom(16), 3, [1, 1, 2])
    with pytest.raises(ValueError):
        split(os.urandom(16), 5, [1, 2, 3])
    with pytest.raises(ValueError):
        split(os.urandom(15), 2, [1, 2])


def test_share_codec_refuses_bad_bytes() -> None:
    data = split(os.urandom(16), 2, [9, 10])[0].to_bytes()
    for cut in range(len(data)):
        with pytest.raises(MalformedMessageError):
            Share.from_bytes(data[:cut])
    with pytest.raises(MalformedMessageError):
        Share.from_bytes(data + b"\0\0\0\0")
    with pytest.raises(MalformedMessageError):
        Share.from_bytes(b"\0\0\0\0" + data[4:])  # x = 0 is the secret's point
    with pytest.raises(MalformedMessageError):
        Share.from_bytes(data[:-4] + (PRIME).to_bytes(4, "little"))  # a value outside the field
