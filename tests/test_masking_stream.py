"""Streamed masked inputs: parts masked at their keystream positions sum to what whole inputs sum to; a server
accepts parts only in order; a client that stops mid-stream fails the round (its parts cannot be taken out)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigurationError, DropoutError, MalformedMessageError, MalformedUpdateError
from secagg.hazmat.prg import add_masks
from secagg.masking.client import PART_VALUES
from secagg.masking.messages import MaskedInput
from secagg.masking.setup import build_round
from secagg.messages import decode
from secagg.roles import AGGREGATOR
from secagg.simulation import run_round

N, DIM = 4, 2 * (1 << 16) + 5  # three parts of one chunk each


class Lazy:
    def __init__(self, values: np.ndarray) -> None:
        self._v, self.shape = values, values.shape

    def __getitem__(self, s: slice) -> np.ndarray:
        return self._v[s].copy()


XS = {i: np.random.default_rng(i).uniform(-0.9, 0.9, DIM) for i in range(N)}
WS = {i: 0.5 + 0.25 * i for i in range(N)}


def _want(ids) -> np.ndarray:
    return sum(WS[i] * XS[i] for i in ids) / sum(WS[i] for i in ids)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**20).map(lambda k: 4 * k), st.integers(1, 3000), st.sampled_from([np.uint32, np.uint64]))
def test_masks_of_a_part_are_the_whole_masks_at_its_positions(first: int, size: int, dtype) -> None:
    seeds = [bytes([i]) * 32 for i in range(3)]
    whole = np.zeros(first + size, dtype=dtype)
    add_masks(whole, seeds[:2], seeds[2:])
    part = np.zeros(size, dtype=dtype)
    add_masks(part, seeds[:2], seeds[2:], first=first)
    assert np.array_equal(part, whole[first:])


def test_a_part_off_the_block_grid_is_refused() -> None:
    with pytest.raises(ValueError):
        add_masks(np.zeros(8, np.uint32), [bytes(32)], first=3)


@pytest.mark.parametrize("part", [1, 2, None])
def test_a_streamed_round_gives_the_mean_of_whole_inputs(part) -> None:
    rnd = build_round(range(N), dim=DIM, weights=WS, graph_seed=bytes(16))
    sent: list[MaskedInput] = []
    receive = rnd.aggregator.receive

    def spy(sender, payload):
        msg = decode(payload)
        if isinstance(msg, MaskedInput):
            sent.append(msg)
        return receive(sender, payload)

    rnd.aggregator.receive = spy
    res = run_round(rnd.clients, rnd.aggregator, {i: Lazy(XS[i]) for i in range(N)}, WS, part_chunks=part or 10)
    assert np.max(np.abs(res.mean - _want(range(N)))) < 1e-3
    per_client = len(sent) // N
    assert per_client == (-(-(DIM + 1) // (PART_VALUES * part)) if part else 1)
    assert max(m.masked.size for m in sent) <= PART_VALUES * (part or 10)


def test_a_client_dropping_before_its_first_part_is_unmasked_as_a_dropout() -> None:
    rnd = build_round(range(N), dim=DIM, weights=WS, graph_seed=bytes(16))
    res = run_round(rnd.clients, rnd.aggregator, {i: Lazy(XS[i]) for i in range(N)}, WS, part_chunks=1,
                    drop_at={2: MaskedInput.TAG})
    assert res.dropped == (2,)
    assert np.max(np.abs(res.mean - _want([0, 1, 3]))) < 1e-3


def _streams(part_chunks: int = 1):
    """Drive a round by hand to the masked stage: every client's iterator of masked parts."""
    rnd = build_round(range(N), dim=DIM, weights=WS, graph_seed=bytes(16))
    server, clients = rnd.aggregator, rnd.clients
    pending = []
    for i, c in clients.items():
        pending += [(i, o) for o in c.stream(XS[i], WS[i], part_chunks=part_chunks)]
    parts = {}
    while pending:
        sender, out = pending.pop(0)
        if out.to == AGGREGATOR:
            pending += [(AGGREGATOR, o) for o in server.receive(sender, out.payload)]
        else:
            got = clients[out.to].receive(out.payload)
            if isinstance(got, list):
                pending += [(out.to, o) for o in got]
            else:
                parts[out.to] = [o.payload for o in got]
    return server, parts


def test_parts_out_of_order_or_past_the_end_are_refused_and_a_mid_stream_stop_fails_the_round() -> None:
    server, parts = _streams()
    with pytest.raises(MalformedMessageError):  # skips the first part
        server.receive(0, parts[0][1])
    server.receive(0, parts[0][0])
    with pytest.raises(MalformedMessageError):  # the same part again
        server.receive(0, parts[0][0])
    long = decode(parts[0][1])
    with pytest.raises(MalformedMessageError):  # runs past the end
        server.receive(0, MaskedInput(long.round_id, 0, long.first, np.zeros(DIM, np.uint32)).to_bytes())
    for p in parts[0][1:]:
        server.receive(0, p)
    for i in (1, 2):
        for p in parts[i]:
            server.receive(i, p)
    server.receive(3, parts[3][0])
    with pytest.raises(DropoutError, match="mid-stream"):
        server.close_stage()
    assert server.stage == "failed"


def test_a_streamed_update_is_checked_whole_before_any_key_is_made() -> None:
    rnd = build_round(range(N), dim=DIM, weights=WS, graph_seed=bytes(16))
    bad = XS[0].copy()
    bad[-1] = np.inf
    with pytest.raises(MalformedUpdateError):
        rnd.clients[0].stream(Lazy(bad), WS[0])
    with pytest.raises(MalformedUpdateError):
        rnd.clients[0].stream(Lazy(XS[0][:-1]), WS[0])
    with pytest.raises(ConfigurationError):
        rnd.clients[0].stream(XS[0], WS[0], part_chunks=0)
    assert rnd.clients[0].stage == "init"
