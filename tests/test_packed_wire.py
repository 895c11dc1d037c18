"""Packed messages on the wire: round trips, tags in 0x30..0x3F, every truncation and single-bit flip refused
(synthetic messages and a real ciphertext), and semantically invalid fields refused at construction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.he_keyholder import granted_tag_key
from secagg.errors import MalformedMessageError
from secagg.messages import decode
from secagg.packed import PackedAggregate, PackedClient, PackedContribution, PackedKeyHolder, PackedParams, \
    PackedResult
from secagg.roles import message_tag

ids = st.lists(st.integers(0, 2**40), min_size=1, max_size=5, unique=True).map(lambda xs: tuple(sorted(xs)))
chunks = st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=3).map(tuple)
sids = st.binary(min_size=32, max_size=32)
rounds = st.integers(0, 2**63 - 1)
dims = st.integers(1, 2**31)

messages = st.one_of(
    st.builds(PackedContribution, round_id=rounds, client_id=st.integers(0, 2**63 - 1), session_id=sids, dim=dims,
              first=st.integers(0, 2**40), chunks=chunks, sealed_tags=st.binary(max_size=40)),
    st.builds(PackedAggregate, round_id=rounds, session_id=sids, dim=dims, contributors=ids, first=st.integers(0, 9),
              chunks=chunks, tags=st.just(())),
    st.builds(PackedResult, round_id=rounds, contributors=ids,
              slots=st.lists(st.integers(0, 2**63), min_size=1, max_size=4).map(lambda v: np.array(v, "<u8")),
              terms=st.sampled_from([b"", bytes(32)]), signature=st.sampled_from([b"", bytes(64)])),
)


def test_tags_are_in_the_packed_range() -> None:
    tags = [PackedContribution.TAG, PackedAggregate.TAG, PackedResult.TAG]
    assert len(set(tags)) == 3 and all(0x30 <= t <= 0x3F for t in tags)


@settings(max_examples=60, deadline=None)
@given(messages)
def test_round_trip(msg) -> None:
    data = msg.to_bytes()
    assert message_tag(data) == msg.TAG and decode(data) == msg and type(msg).from_bytes(data) == msg


@settings(max_examples=30, deadline=None)
@given(messages)
def test_every_truncation_and_bit_flip_is_refused(msg) -> None:
    data = msg.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(MalformedMessageError):
            decode(data[:cut])
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(MalformedMessageError):
                decode(bytes(bad))


@pytest.fixture(scope="module")
def real_contribution() -> bytes:
    params = PackedParams(max_cohort=4)
    kh = PackedKeyHolder(params)
    return PackedClient(3, kh.public_context(), params, round_id=2, tag_key=granted_tag_key(kh, 3)).start(np.linspace(-1, 1, 10), 1.0)[1].payload


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_real_ciphertext_truncations_and_flips_refused(real_contribution, data) -> None:
    n = len(real_contribution)
    with pytest.raises(MalformedMessageError):
        decode(real_contribution[:data.draw(st.integers(0, n - 1))])
    pos, bit = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, 7))
    bad = bytearray(real_contribution)
    bad[pos] ^= 1 << bit
    with pytest.raises(MalformedMessageError):
        decode(bytes(bad))


@pytest.mark.parametrize("make", [
    lambda: PackedContribution(round_id=-1, client_id=0, session_id=bytes(32), dim=1, first=0, sealed_tags=b"", chunks=(b"x",)),
    lambda: PackedContribution(round_id=0, client_id=0, session_id=bytes(31), dim=1, first=0, sealed_tags=b"", chunks=(b"x",)),
    lambda: PackedContribution(round_id=0, client_id=0, session_id=bytes(32), dim=0, first=0, sealed_tags=b"", chunks=(b"x",)),
    lambda: PackedContribution(round_id=0, client_id=0, session_id=bytes(32), dim=1, first=0, sealed_tags=b"", chunks=(b"",)),
    lambda: PackedAggregate(round_id=0, session_id=bytes(32), dim=1, contributors=(2, 1), first=0, tags=(), chunks=(b"x",)),
    lambda: PackedAggregate(round_id=0, session_id=bytes(32), dim=1, contributors=(), first=0, tags=(), chunks=(b"x",)),
    lambda: PackedResult(round_id=0, contributors=(1,), slots=np.zeros(2, "<f8"), terms=b"", signature=b""),
    lambda: PackedResult(round_id=0, contributors=(1,), slots=np.zeros(0, "<u8"), terms=b"", signature=b""),
])
def test_invalid_fields_refused(make) -> None:
    with pytest.raises(MalformedMessageError):
        make()
