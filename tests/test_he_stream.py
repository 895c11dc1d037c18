"""Streamed HE rounds (:mod:`secagg.he_stream`): contributions in parts, a bounded aggregator window, the key holder
decrypting part by part and releasing only after the last part's checks; and what a malicious aggregator or
client gains by choosing parts (nothing: a named error, or a refusal of the whole sum)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.ckks.setup import build_round as ckks_round
from secagg.encoding import update_length
from secagg.errors import BackpressureError, DropoutError, DuplicateMessageError, MalformedMessageError, \
    MalformedUpdateError, StageError, VerificationError
from secagg.messages import decode
from secagg.packed.params import pack
from secagg.packed.setup import build_round as packed_round
from secagg.roles import AGGREGATOR, KEYHOLDER
from secagg.simulation import run_round

N = 3


class Lazy:
    """An update made slice by slice (never whole), as a benchmark or a memory-mapped model would give it."""

    def __init__(self, values: np.ndarray) -> None:
        self._v, self.shape, self.reads = values, values.shape, 0

    def __getitem__(self, s: slice) -> np.ndarray:
        self.reads += 1
        return self._v[s].copy()


def _setup(scheme: str, dim: int, chunks_in_window: int | None = None):
    build = ckks_round if scheme == "ckks" else packed_round
    opts = {"params": "add-only"} if scheme == "ckks" else {}
    rnd = build(list(range(N)), dim=dim, weights={i: 1.0 for i in range(N)}, graph_seed=bytes(16), **opts)
    if chunks_in_window is not None:  # rebuild the aggregator's window at that many chunks
        chunk = 8 * int(np.prod(rnd.aggregator._layout.shape))
        agg = rnd.aggregator
        agg._init_round(agg.participants, dim=dim, round_id=agg.round_id, min_contributors=agg.min_contributors,
                        window_bytes=chunk * chunks_in_window)
    return rnd


DIMS = {"ckks": 5 * 2048 + 7, "packed": 2 * 4096 * 3 + 11}  # 6 and 4 ciphertexts
XS = {i: np.random.default_rng(i).uniform(-0.5, 0.5, max(DIMS.values())) for i in range(N)}
TOL = {"ckks": 1e-6, "packed": 1e-3}


def _want(dim: int, ids=range(N)) -> np.ndarray:
    return sum(XS[i][:dim] for i in ids)


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_a_streamed_round_in_a_small_window_gives_the_sum_and_never_holds_more(scheme: str) -> None:
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim, chunks_in_window=2)
    agg, kh = rnd.aggregator, rnd.finalizer
    held, parts = [], []
    receive, kh_receive = agg.receive, kh.receive

    def spy(sender, payload):
        out = receive(sender, payload)
        held.append(len(agg._sum._sums))
        return out

    def kh_spy(sender, payload):
        if sender == AGGREGATOR:
            parts.append(decode(payload))
        return kh_receive(sender, payload)

    agg.receive, kh.receive = spy, kh_spy
    sources = {i: Lazy(XS[i][:dim]) for i in range(N)}
    res = run_round(rnd.clients, agg, sources, {i: 1.0 for i in range(N)}, finalizer=kh, part_chunks=1)
    assert np.max(np.abs(res.weighted_sum - _want(dim))) < TOL[scheme] and abs(res.total_weight - N) < 1e-6
    assert max(held) <= 2  # the window, whatever the contribution's size
    assert len(parts) > 1 and [p.first for p in parts] == sorted({p.first for p in parts})
    assert all(not p.tags for p in parts[:-1]) and len(parts[-1].tags) == N
    assert all(s.reads >= 2 for s in sources.values())  # read a chunk at a time: once to check, once to encrypt


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_whole_and_streamed_contributions_mix_and_give_the_same_sum(scheme: str) -> None:
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim)
    agg, kh = rnd.aggregator, rnd.finalizer
    for i, client in rnd.clients.items():
        outs = client.start(XS[i][:dim], 1.0) if i == 0 else list(client.stream(XS[i][:dim], 1.0, part_chunks=3))
        for out in outs:
            for nxt in ((kh if out.to == KEYHOLDER else agg).receive(i, out.payload)):
                assert nxt.to == KEYHOLDER
                (done,) = kh.receive(AGGREGATOR, nxt.payload)
                agg.receive(KEYHOLDER, done.payload)
    assert np.max(np.abs(agg.result().weighted_sum - _want(dim))) < TOL[scheme]


def test_the_streamed_packed_layout_is_the_whole_layout() -> None:
    """Slot ``j`` lane ``l`` holds value ``l*S + j`` whether it is made whole (``pack``) or chunk by chunk."""
    dim = DIMS["packed"]
    rnd = packed_round(list(range(2)), dim=dim, weights={0: 1.0, 1: 1.0}, graph_seed=bytes(16),
                       rounding="deterministic")
    c = rnd.clients[0]
    x = XS[0][:dim]
    streamed = np.concatenate(list(c._lanes(x, dim, 1.0)))
    whole = np.concatenate([c.codec.encode_values(x, 1.0), [c.codec.encode_weight(1.0)]]).astype(np.uint64)
    want = np.concatenate([pack(whole, c.params), np.zeros(c.params.guard_slots, np.uint64)])
    assert np.array_equal(streamed, want)


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_parts_out_of_order_overlapping_or_too_far_ahead_change_nothing(scheme: str) -> None:
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim, chunks_in_window=2)
    agg = rnd.aggregator
    outs = {i: [o for o in c.stream(XS[i][:dim], 1.0, part_chunks=1)] for i, c in rnd.clients.items()}
    parts = {i: [o.payload for o in v if o.to == AGGREGATOR] for i, v in outs.items()}
    with pytest.raises(MalformedMessageError):  # skips chunk 0
        agg.receive(0, parts[0][1])
    agg.receive(0, parts[0][0])
    with pytest.raises(MalformedMessageError):  # chunk 0 again
        agg.receive(0, parts[0][0])
    agg.receive(0, parts[0][1])
    with pytest.raises(BackpressureError):  # chunk 2 is past the window [0, 2): the others have not started
        agg.receive(0, parts[0][2])
    if len(parts[0]) > 4:  # a larger part from there too (one that does not reach the end)
        with pytest.raises(BackpressureError):
            agg.receive(0, dataclasses.replace(decode(parts[0][2]), chunks=decode(parts[0][2]).chunks * 2).to_bytes())
    assert agg._sum._next[0] == 2 and agg.stage == "collect"
    tags_early = decode(parts[1][0])
    with pytest.raises(MalformedMessageError):  # sealed tags on a part that is not the last
        agg.receive(1, dataclasses.replace(tags_early, sealed_tags=b"x" * 40).to_bytes())
    last = decode(parts[1][-1])
    with pytest.raises(MalformedMessageError):  # a last part without its tags
        agg.receive(1, dataclasses.replace(last, sealed_tags=b"").to_bytes())


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_a_client_that_stops_mid_stream_fails_the_round_and_a_late_one_is_refused(scheme: str) -> None:
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim)
    agg = rnd.aggregator
    parts = {i: [o.payload for o in c.stream(XS[i][:dim], 1.0, part_chunks=1) if o.to == AGGREGATOR]
             for i, c in rnd.clients.items()}
    for i in (0, 1):
        agg.receive(i, parts[i][0])
    assert agg.close_stage() == []  # the deadline fixes the contributors to {0, 1}: client 2 is out
    assert agg._sum.contributors == (0, 1)
    with pytest.raises(StageError):
        agg.receive(2, parts[2][0])
    for p in parts[0][1:]:
        agg.receive(0, p)
    with pytest.raises(DropoutError, match="mid-stream"):  # client 1 sent one part only
        agg.close_stage()
    assert agg.stage == "failed"


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_the_key_holder_refuses_parts_that_do_not_continue_its_stream(scheme: str) -> None:
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim, chunks_in_window=2)
    agg, kh = rnd.aggregator, rnd.finalizer
    iters = {i: c.stream(XS[i][:dim], 1.0, part_chunks=1) for i, c in rnd.clients.items()}
    for i, it in iters.items():
        kh.receive(i, next(it).payload)  # the seeds
    sent = []
    for _ in range(2):
        for i, it in iters.items():
            sent += agg.receive(i, next(it).payload)
    first = decode(sent[0].payload)
    assert first.first == 0 and not first.tags
    with pytest.raises(MalformedMessageError):  # no stream open yet: a part from chunk 1 continues nothing
        kh.receive(AGGREGATOR, dataclasses.replace(first, first=1).to_bytes())
    assert kh.receive(AGGREGATOR, sent[0].payload) == []
    with pytest.raises(DuplicateMessageError):  # the first part again: a second stream of a consumed round
        kh.receive(AGGREGATOR, sent[0].payload)
    with pytest.raises(MalformedMessageError):  # skips a chunk
        kh.receive(AGGREGATOR, dataclasses.replace(first, first=len(first.chunks) + 1).to_bytes())
    with pytest.raises(MalformedMessageError):  # other contributors in a later part
        kh.receive(AGGREGATOR, dataclasses.replace(first, first=len(first.chunks), contributors=(0, 1)).to_bytes())


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_an_aggregator_that_reorders_chunks_between_parts_is_refused_at_the_end(scheme: str) -> None:
    """Each part continues the stream, but the chunks' sums are swapped: every part decrypts, the tags do not
    match, and nothing is released."""
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim)
    agg, kh = rnd.aggregator, rnd.finalizer
    whole = []
    for i, c in rnd.clients.items():
        for out in c.start(XS[i][:dim], 1.0):
            if out.to == KEYHOLDER:
                kh.receive(i, out.payload)
            else:
                whole += agg.receive(i, out.payload)
    (agg_msg,) = whole
    msg = decode(agg_msg.payload)
    chunks = list(msg.chunks)
    chunks[0], chunks[1] = chunks[1], chunks[0]
    first = dataclasses.replace(msg, chunks=tuple(chunks[:2]), tags=())
    rest = dataclasses.replace(msg, first=2, chunks=tuple(chunks[2:]))
    assert kh.receive(AGGREGATOR, first.to_bytes()) == []
    with pytest.raises(VerificationError):
        kh.receive(AGGREGATOR, rest.to_bytes())
    assert msg.round_id in kh.finalized_rounds


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(part=st.integers(1, 5), extra=st.integers(0, 3), dropped=st.sampled_from([None, 0, 2]))
def test_any_part_size_window_and_early_dropout_gives_the_survivors_sum(part: int, extra: int,
                                                                         dropped: int | None) -> None:
    dim, window = DIMS["ckks"], part + extra
    rnd = _setup("ckks", dim, chunks_in_window=window)
    ids = [i for i in range(N) if i != dropped]
    clients = {i: rnd.clients[i] for i in ids}
    res = run_round(clients, rnd.aggregator, {i: XS[i][:dim] for i in ids}, {i: 1.0 for i in ids},
                    finalizer=rnd.finalizer, part_chunks=part)
    assert res.contributors == tuple(ids)
    assert np.max(np.abs(res.weighted_sum - _want(dim, ids))) < 1e-6


def test_whole_contributions_larger_than_the_window_are_one_running_sum() -> None:
    """Clients that do not stream send one part each: taken whole, summed into one set of sums (not n)."""
    dim = DIMS["ckks"]
    rnd = _setup("ckks", dim, chunks_in_window=2)
    res = run_round(rnd.clients, rnd.aggregator, {i: XS[i][:dim] for i in range(N)}, {i: 1.0 for i in range(N)},
                    finalizer=rnd.finalizer)
    assert np.max(np.abs(res.weighted_sum - _want(dim))) < 1e-6


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_a_bad_value_anywhere_is_refused_before_anything_is_sent(scheme: str) -> None:
    dim = DIMS[scheme]
    rnd = _setup(scheme, dim)
    x = XS[0][:dim].copy()
    x[-3] = np.nan
    with pytest.raises(MalformedUpdateError):
        rnd.clients[0].stream(Lazy(x), 1.0)
    x[-3] = 1e9
    with pytest.raises(MalformedUpdateError):
        rnd.clients[0].stream(x, 1.0)
    assert rnd.clients[0].stage == "ready"  # nothing spent: it may retry with a good update
    assert len(list(rnd.clients[0].stream(XS[0][:dim], 1.0))) >= 2


def test_an_update_source_must_be_one_dimensional_and_sliceable() -> None:
    for bad in (object(), [1.0, 2.0], type("S", (), {"shape": (0,), "__getitem__": lambda s, k: 0})()):
        with pytest.raises(MalformedUpdateError):
            update_length(bad)
    assert update_length(Lazy(np.zeros(7))) == 7


def test_the_window_is_at_least_one_chunk() -> None:
    from secagg.he_stream import window_chunks

    layout = _setup("ckks", 10).aggregator._layout
    assert window_chunks(layout, 1) == 1
    assert window_chunks(layout, 10 * 8 * int(np.prod(layout.shape))) == 10
