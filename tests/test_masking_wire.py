"""Every masking message type, as produced by a real signed round with dropouts: round trip, every truncation,
random bit flips, and body mutations with a recomputed checksum. Decoding raises MalformedMessageError and
nothing else."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import MalformedMessageError
from secagg.masking import build_round
from secagg.masking import messages as mm
from secagg.messages import decode
from secagg.simulation import run_round

TYPES = [mm.AdvertiseKeys, mm.KeyRoster, mm.ShareKeys, mm.ShareDelivery, mm.MaskedInput, mm.ConsistencyRequest,
         mm.ConsistencyResponse, mm.UnmaskRequest, mm.UnmaskResponse]


class Tap:
    """Wraps an aggregator and records every payload it receives or sends."""

    def __init__(self, inner) -> None:
        self.inner, self.log = inner, []

    stage = property(lambda self: self.inner.stage)
    done = property(lambda self: self.inner.done)

    def result(self):
        return self.inner.result()

    def receive(self, sender, payload):
        self.log.append(payload)
        outs = self.inner.receive(sender, payload)
        self.log += [o.payload for o in outs]
        return outs

    def close_stage(self):
        outs = self.inner.close_stage()
        self.log += [o.payload for o in outs]
        return outs


def _transcript() -> dict[int, list[bytes]]:
    n = 7
    rnd = build_round(range(n), dim=5, weights={i: 1.0 + i for i in range(n)}, graph_seed=os.urandom(16),
                      sign=True, round_id=11)
    tap = Tap(rnd.aggregator)
    rng = np.random.default_rng(0)
    run_round(rnd.clients, tap, {i: rng.uniform(-1, 1, 5) for i in range(n)}, {i: 1.0 + i for i in range(n)},
              drop_at={6: mm.MaskedInput.TAG})
    out: dict[int, list[bytes]] = {}
    for p in tap.log:
        out.setdefault(p[3], []).append(p)
    return out


TRANSCRIPT = _transcript()
SAMPLES = [(cls, TRANSCRIPT[cls.TAG][0]) for cls in TYPES]
IDS = [cls.__name__ for cls in TYPES]


def test_transcript_holds_every_type_with_signatures_and_a_dropout() -> None:
    assert set(TRANSCRIPT) == {cls.TAG for cls in TYPES}
    req = mm.UnmaskRequest.from_bytes(TRANSCRIPT[mm.UnmaskRequest.TAG][0])
    assert req.dropped == (6,) and req.signatures
    assert any(mm.UnmaskResponse.from_bytes(p).s_shares for p in TRANSCRIPT[mm.UnmaskResponse.TAG])
    assert all(len(mm.AdvertiseKeys.from_bytes(p).signature) == 64 for p in TRANSCRIPT[mm.AdvertiseKeys.TAG])
    masked = mm.MaskedInput.from_bytes(TRANSCRIPT[mm.MaskedInput.TAG][0]).masked
    assert masked.dtype == np.dtype("<u4") and masked.size == 6  # 32-bit ring packs uint32, not int64


@pytest.mark.parametrize("cls,payload", SAMPLES, ids=IDS)
def test_round_trip_is_canonical(cls, payload: bytes) -> None:
    msg = cls.from_bytes(payload)
    assert msg.to_bytes() == payload and decode(payload) == msg


@pytest.mark.parametrize("cls,payload", SAMPLES, ids=IDS)
def test_every_truncation_and_extension_is_refused(cls, payload: bytes) -> None:
    for cut in range(len(payload)):
        with pytest.raises(MalformedMessageError):
            decode(payload[:cut])
    body = payload[:-4] + b"\x00"
    head = body[:4] + struct.pack("<I", len(body) - 8) + body[8:]
    with pytest.raises(MalformedMessageError):
        decode(head + struct.pack("<I", zlib.crc32(head)))


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(SAMPLES) - 1), data=st.data())
def test_random_bit_flips_are_refused(which: int, data) -> None:
    _, payload = SAMPLES[which]
    bits = data.draw(st.lists(st.integers(0, 8 * len(payload) - 1), min_size=1, max_size=3, unique=True))
    buf = bytearray(payload)
    for b in bits:
        buf[b // 8] ^= 1 << (b % 8)
    with pytest.raises(MalformedMessageError):  # CRC-32 detects every error of up to 3 bits at these lengths
        decode(bytes(buf))


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, len(SAMPLES) - 1), data=st.data())
def test_mutated_bodies_with_valid_checksum_decode_canonically_or_raise_malformed(which: int, data) -> None:
    """Past the checksum, the decoder and validate() meet arbitrary bytes: only MalformedMessageError escapes."""
    cls, payload = SAMPLES[which]
    body = bytearray(payload[8:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    head = payload[:8] + bytes(body)
    mutated = head + struct.pack("<I", zlib.crc32(head))
    try:
        msg = decode(mutated)
    except MalformedMessageError:
        return
    assert isinstance(msg, cls) and msg.to_bytes() == mutated
