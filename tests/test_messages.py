"""The generic message codec: round-trips, and rejects every truncation, bit flip and malformed body."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import MalformedMessageError
from secagg.messages import WIRE_VERSION, Message, decode, message


@message(0xF0)
class Sample(Message):
    round_id: int
    flag: bool
    name: str
    blob: bytes
    vec: np.ndarray
    ids: tuple[int, ...]
    chunks: tuple[bytes, ...]
    table: dict[int, bytes]
    ratio: float

    def validate(self) -> None:
        if self.round_id < 0:
            raise MalformedMessageError("round_id must be >= 0")


@message(0xF1)
class Other(Message):
    round_id: int

    def validate(self) -> None:
        if self.round_id < 0:
            raise MalformedMessageError("round_id must be >= 0")


samples = st.builds(
    Sample,
    round_id=st.integers(0, 2**63 - 1),
    flag=st.booleans(),
    name=st.text(max_size=20),
    blob=st.binary(max_size=40),
    vec=st.sampled_from(["<u2", "<u4", "<u8", "<f4", "<f8"]).flatmap(
        lambda dt: st.lists(st.integers(0, 60000), max_size=12).map(lambda xs: np.array(xs, dtype=dt))),
    ids=st.lists(st.integers(-2**63, 2**63 - 1), max_size=6).map(tuple),
    chunks=st.lists(st.binary(max_size=10), max_size=4).map(tuple),
    table=st.dictionaries(st.integers(0, 1000), st.binary(max_size=8), max_size=4),
    ratio=st.floats(allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_round_trip(msg: Sample) -> None:
    data = msg.to_bytes()
    back = Sample.from_bytes(data)
    assert back == msg
    assert back.vec.dtype == msg.vec.dtype
    assert decode(data) == msg


@settings(max_examples=30, deadline=None)
@given(samples)
def test_bytes_like_fields_encode_exactly_as_their_bytes(msg: Sample) -> None:
    """Senders may hand views of one packed buffer (or bytearrays) for bytes fields: the same wire bytes, and the
    decoded message holds bytes."""
    views = Sample(round_id=msg.round_id, flag=msg.flag, name=msg.name, blob=bytearray(msg.blob), vec=msg.vec,
                   ids=msg.ids, chunks=tuple(memoryview(np.frombuffer(c, dtype=np.uint8)) for c in msg.chunks),
                   table={k: memoryview(v) for k, v in msg.table.items()}, ratio=msg.ratio)
    assert views.to_bytes() == msg.to_bytes()
    back = Sample.from_bytes(views.to_bytes())
    assert type(back.blob) is bytes and all(type(c) is bytes for c in back.chunks) and back == msg


@settings(max_examples=15, deadline=None)
@given(samples)
def test_every_truncation_and_bit_flip_rejected(msg: Sample) -> None:
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


def test_extension_rejected() -> None:
    data = Other(round_id=3).to_bytes()
    with pytest.raises(MalformedMessageError):
        decode(data + b"\x00")


def _reframe(tag: int, body: bytes, version: int = WIRE_VERSION) -> bytes:
    head = struct.pack("<2sBBI", b"SA", version, tag, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def test_valid_checksum_but_bad_body_rejected() -> None:
    """Structural checks hold even when the CRC is recomputed (a deliberate forger, not noise)."""
    good = Other(round_id=1).to_bytes()
    body = good[8:-4]
    with pytest.raises(MalformedMessageError, match="trailing"):
        decode(_reframe(0xF1, body + b"\x01"))
    with pytest.raises(MalformedMessageError, match="truncated"):
        decode(_reframe(0xF1, body[:-1]))
    with pytest.raises(MalformedMessageError, match="unknown message tag"):
        decode(_reframe(0xEE, body))
    with pytest.raises(MalformedMessageError, match="version"):
        decode(_reframe(0xF1, body, version=9))
    with pytest.raises(MalformedMessageError, match="round_id"):
        decode(_reframe(0xF1, struct.pack("<q", -5)))


def test_huge_count_does_not_allocate() -> None:
    msg = Sample(round_id=1, flag=True, name="", blob=b"", vec=np.zeros(0, "<u4"), ids=(), chunks=(), table={},
                 ratio=0.0)
    body = bytearray(msg.to_bytes()[8:-4])
    # the vec field starts after round_id (8), flag (1), name (4), blob (4): dtype code then count
    struct.pack_into("<I", body, 18, 2**31)
    with pytest.raises(MalformedMessageError, match="exceeds"):
        decode(_reframe(0xF0, bytes(body)))


def test_unsorted_map_rejected() -> None:
    pair = struct.pack("<q", 5) + struct.pack("<I", 0) + struct.pack("<q", 2) + struct.pack("<I", 0)
    msg = Sample(round_id=1, flag=False, name="", blob=b"", vec=np.zeros(0, "<u4"), ids=(), chunks=(), table={},
                 ratio=0.0)
    body = msg.to_bytes()[8:-4]
    # replace the empty table (count 0) just before the trailing float with a two-entry, descending table
    table_at = len(body) - 8 - 4
    forged = body[:table_at] + struct.pack("<I", 2) + pair + body[-8:]
    with pytest.raises(MalformedMessageError, match="increasing"):
        decode(_reframe(0xF0, forged))


def test_wrong_type_and_non_bytes() -> None:
    with pytest.raises(MalformedMessageError, match="expected Sample"):
        Sample.from_bytes(Other(round_id=1).to_bytes())
    with pytest.raises(MalformedMessageError):
        decode("not bytes")  # type: ignore[arg-type]


def test_duplicate_tag_refused() -> None:
    with pytest.raises(ValueError, match="already used"):
        @message(0xF0)
        class Clash(Message):
            x: int


def test_disallowed_dtype_refused_on_encode() -> None:
    msg = Sample(round_id=1, flag=False, name="", blob=b"", vec=np.zeros(2, np.int16), ids=(), chunks=(),
                 table={}, ratio=0.0)
    with pytest.raises(MalformedMessageError, match="not allowed"):
        msg.to_bytes()


def test_frames_carry_the_standard_crc32() -> None:
    """The frame checksum is zlib's CRC-32 (computed with zlib-ng's SIMD code): the standard check value, and a
    frame whose trailer zlib itself computed decodes."""
    import zlib

    from secagg import messages

    assert messages.crc32(b"123456789") == 0xCBF43926 == zlib.crc32(b"123456789")
    payload = bytes(np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8))
    assert messages.crc32(payload) == zlib.crc32(payload)
