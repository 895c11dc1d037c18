"""CKKS messages on the wire: round trips, semantic validation, and every truncation and single-bit flip of every
message type refused by the decoder (the codec's CRC-32 must hold for these layouts too)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.he_keyholder import granted_tag_key
from secagg.ckks import CKKSClient, KeyHolder
from secagg.ckks.messages import CKKSAggregate, CKKSContribution, CKKSResult
from secagg.errors import MalformedMessageError
from secagg.he_pads import PadSeed
from secagg.messages import decode
from secagg.roles import message_tag

ids = st.lists(st.integers(0, 2**40), min_size=1, max_size=5, unique=True).map(lambda xs: tuple(sorted(xs)))
chunks = st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=3).map(tuple)
ctx_ids = st.binary(min_size=32, max_size=32)
rounds = st.integers(0, 2**63 - 1)
dims = st.integers(1, 2**31)

contributions = st.builds(CKKSContribution, round_id=rounds, client_id=st.integers(0, 2**63 - 1),
                          context_id=ctx_ids, dim=dims, first=st.integers(0, 2**40), chunks=chunks,
                          sealed_tags=st.binary(max_size=40))
aggregates = st.builds(CKKSAggregate, round_id=rounds, context_id=ctx_ids, dim=dims, contributors=ids,
                       first=st.integers(0, 9), chunks=chunks, tags=st.just(()))
seeds = st.builds(PadSeed, round_id=rounds, client_id=st.integers(0, 2**63 - 1), session_id=ctx_ids, terms=ctx_ids,
                  ephemeral=ctx_ids, sealed=st.binary(min_size=60, max_size=60),
                  signature=st.sampled_from([b"", bytes(64)]))
results = st.builds(CKKSResult, round_id=rounds, contributors=ids,
                    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=4).map(np.array),
                    terms=st.sampled_from([b"", bytes(32)]), signature=st.sampled_from([b"", bytes(64)]))
messages = st.one_of(contributions, aggregates, results, seeds)


def test_tags_are_in_the_ckks_range() -> None:
    tags = [CKKSContribution.TAG, CKKSAggregate.TAG, CKKSResult.TAG]
    assert len(set(tags)) == 3 and all(0x10 <= t <= 0x1F for t in tags)


@settings(max_examples=60, deadline=None)
@given(messages)
def test_round_trip(msg) -> None:
    data = msg.to_bytes()
    assert message_tag(data) == msg.TAG
    assert decode(data) == msg and type(msg).from_bytes(data) == msg


@settings(max_examples=40, deadline=None)
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
    kh = KeyHolder("add-only")
    return CKKSClient(4, kh.public_context(), round_id=9, tag_key=granted_tag_key(kh, 4)).start(np.linspace(-1, 1, 10), 1.0)[1].payload


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_real_ciphertext_message_truncations_and_flips_refused(real_contribution, data) -> None:
    """The same holds for a real 61 KB ciphertext message, at positions drawn all over it."""
    n = len(real_contribution)
    cut = data.draw(st.integers(0, n - 1))
    with pytest.raises(MalformedMessageError):
        decode(real_contribution[:cut])
    pos, bit = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, 7))
    bad = bytearray(real_contribution)
    bad[pos] ^= 1 << bit
    with pytest.raises(MalformedMessageError):
        decode(bytes(bad))
    assert decode(real_contribution).client_id == 4


def test_semantic_validation() -> None:
    good_c = CKKSContribution(round_id=1, client_id=2, context_id=bytes(32), dim=3, first=0, chunks=(b"x",),
                              sealed_tags=b"")
    for change in [dict(round_id=-1), dict(client_id=-1), dict(context_id=bytes(31)), dict(dim=0), dict(first=-1),
                   dict(chunks=()), dict(chunks=(b"x", b""))]:
        with pytest.raises(MalformedMessageError):
            dataclasses.replace(good_c, **change)
    good_a = CKKSAggregate(round_id=1, context_id=bytes(32), dim=3, contributors=(0, 1), first=0, chunks=(b"x",),
                           tags=())
    for change in [dict(contributors=()), dict(contributors=(1, 0)), dict(contributors=(1, 1)), dict(first=-2),
                   dict(tags=(b"t",)),
                   dict(contributors=(-1, 2)), dict(context_id=b""), dict(round_id=-5)]:
        with pytest.raises(MalformedMessageError):
            dataclasses.replace(good_a, **change)
    good_r = CKKSResult(round_id=1, contributors=(0, 1), values=np.zeros(3), terms=b"", signature=b"")
    for change in [dict(values=np.zeros(0)), dict(values=np.array([1.0, np.nan])), dict(values=np.zeros(3, "<f4")),
                   dict(contributors=(2, 1))]:
        with pytest.raises(MalformedMessageError):
            dataclasses.replace(good_r, **change)
    good_s = PadSeed(round_id=1, client_id=2, session_id=bytes(32), terms=bytes(32), ephemeral=bytes(32),
                     sealed=bytes(60), signature=b"")
    for change in [dict(round_id=-1), dict(client_id=-3), dict(session_id=bytes(31)), dict(ephemeral=bytes(33)),
                   dict(terms=bytes(31)),
                   dict(sealed=bytes(59)), dict(signature=bytes(63))]:
        with pytest.raises(MalformedMessageError):
            dataclasses.replace(good_s, **change)
    # the same checks run on decode: a well-formed frame with a bad body is refused
    with pytest.raises(MalformedMessageError):
        CKKSAggregate.from_bytes(good_c.to_bytes())  # right frame, wrong message type
