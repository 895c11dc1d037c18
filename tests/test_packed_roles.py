"""Packed BFV rounds: the decrypted weighted mean equals numpy's within the quantization bound for random cohorts,
dimensions, weights and dropouts, and every refusal of the trust model raises its named error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.he_keyholder import granted_tag_key
from secagg.errors import AuthenticationError, ConfigurationError, DecryptionError, DropoutError, \
    DuplicateMessageError, KeyMisuseError, MalformedMessageError, MalformedUpdateError, StageError, \
    TooFewContributorsError, UnknownClientError, WrongRoundError
from secagg.he_round import bundle, unbundle
from secagg.packed import PackedAggregator, PackedClient, PackedContribution, PackedKeyHolder, PackedParams, \
    build_round
from secagg.packed.params import load_public_context
from secagg.roles import AGGREGATOR, KEYHOLDER
from secagg.simulation import run_round


def _bound(codec, xs, ws, alive) -> float:
    """Worst-case error of the mean from the per-client quantization steps (independent of the scheme)."""
    e_sum, e_w = codec.error_bound(len(alive))
    total = float(np.sum(ws[alive]))
    mean = np.abs((ws[alive, None] * xs[alive]).sum(0) / total)
    return float(np.max((e_sum + mean * e_w) / (total - e_w)))


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_mean_matches_numpy_within_the_quantization_bound(data) -> None:
    n = data.draw(st.integers(2, 8), label="n")
    dim = data.draw(st.sampled_from([1, 7, 300, 4095, 8191, 8193, 12000]), label="dim")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    dropped = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 2), label="dropped")
    rounding = data.draw(st.sampled_from(["stochastic", "deterministic"]), label="rounding")
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1, 1, (n, dim))
    xs[:, 0] = rng.choice([-1.0, 1.0], n)  # the clip range's edges
    ws = rng.uniform(0.05, 5.0, n)
    rnd = build_round(range(n), dim=dim, weights=dict(enumerate(ws)), graph_seed=bytes(16), rounding=rounding)
    res = run_round(rnd.clients, rnd.aggregator, dict(enumerate(xs)), dict(enumerate(ws)), finalizer=rnd.finalizer,
                    drop_at={d: rnd.drop_tag for d in dropped})
    alive = np.array(sorted(set(range(n)) - dropped))
    assert res.contributors == tuple(alive) and res.dropped == tuple(sorted(dropped))
    ref = (ws[alive, None] * xs[alive]).sum(0) / ws[alive].sum()
    assert np.max(np.abs(res.mean - ref)) <= _bound(rnd.aggregator.codec, xs, ws, alive)


def test_default_precision_meets_1e4_at_n100() -> None:
    """D = 2000, n = 100 clients (2 lanes of 14 bits), |x| <= 1, weights in [0.5, 2]: error <= 1e-4."""
    rng = np.random.default_rng(1)
    n, dim = 100, 2000
    xs, ws = rng.uniform(-1, 1, (n, dim)), rng.uniform(0.5, 2.0, n)
    rnd = build_round(range(n), dim=dim, weights=dict(enumerate(ws)), graph_seed=bytes(16))
    assert rnd.aggregator.params.lanes == 2
    res = run_round(rnd.clients, rnd.aggregator, dict(enumerate(xs)), dict(enumerate(ws)), finalizer=rnd.finalizer)
    assert np.max(np.abs(res.mean - (ws[:, None] * xs).sum(0) / ws.sum())) <= 1e-4


@pytest.fixture(scope="module")
def session():
    params = PackedParams(max_cohort=8)
    kh = PackedKeyHolder(params)
    return params, kh


def _contribution(session, cid: int, x=None, *, round_id: int = 0, seed: bool = True) -> bytes:
    """Client ``cid``'s contribution; its pad seed goes straight to the session's key holder."""
    params, kh = session
    c = PackedClient(cid, kh.public_context(), params, weight_bound=2.0, round_id=round_id,
                     tag_key=granted_tag_key(kh, cid))
    to_kh, contribution = c.start(np.linspace(-1, 1, 5) if x is None else x, 1.5)
    if seed:
        kh.receive(cid, to_kh.payload)
    return contribution.payload


def test_private_context_refused_everywhere(session) -> None:
    params, kh = session
    _, seal_key = unbundle(kh.public_context())
    private = bundle(kh._context.serialize(save_secret_key=True), seal_key)
    with pytest.raises(KeyMisuseError):
        PackedAggregator(private, params, [0, 1], dim=5)
    with pytest.raises(KeyMisuseError):
        PackedClient(0, private, params)
    parsed = load_public_context(kh.public_context(), params, need_public_key=True)
    leaked = dataclasses.replace(parsed, context=kh._context)  # a parsed session holding the secret context
    with pytest.raises(KeyMisuseError):
        PackedClient(0, leaked, params)
    with pytest.raises(KeyMisuseError):
        PackedAggregator(leaked, params, [0, 1], dim=5)


def test_key_holder_refuses_single_contributions_and_misuse(session) -> None:
    params, kh = session
    agg = PackedAggregator(kh.public_context(), params, [0, 1, 2], dim=5, weight_bound=2.0, round_id=3)
    one = _contribution(session, 0, round_id=3)
    with pytest.raises(MalformedMessageError):  # a single contribution is never decrypted
        kh.receive(AGGREGATOR, one)
    assert agg.receive(0, one) == [] and agg.stage == "collect"  # nothing goes out with one of three
    kh1 = PackedKeyHolder(params, min_contributors=2)
    agg1 = PackedAggregator(kh1.public_context(), params, [0, 1], dim=5, weight_bound=2.0, min_contributors=1)
    c0 = PackedClient(0, kh1.public_context(), params, weight_bound=2.0, tag_key=granted_tag_key(kh1, 0))
    agg1.receive(0, c0.start(np.zeros(5), 1.0)[1].payload)
    (out,) = agg1.close_stage()
    with pytest.raises(TooFewContributorsError):
        kh1.receive(AGGREGATOR, out.payload)
    with pytest.raises(AuthenticationError):
        kh1.receive(0, out.payload)
    with pytest.raises(DecryptionError):  # another key holder's session
        kh.receive(AGGREGATOR, out.payload)


def test_full_round_then_refusals(session) -> None:
    params, kh = session
    agg = PackedAggregator(kh.public_context(), params, [0, 1, 2], dim=5, weight_bound=2.0, round_id=7)
    with pytest.raises(UnknownClientError):
        agg.receive(9, _contribution(session, 9, round_id=7, seed=False))
    with pytest.raises(WrongRoundError):
        agg.receive(0, _contribution(session, 0, round_id=6, seed=False))
    with pytest.raises(AuthenticationError):
        agg.receive(1, _contribution(session, 0, round_id=7, seed=False))
    agg.receive(0, _contribution(session, 0, round_id=7))
    with pytest.raises(DuplicateMessageError):
        agg.receive(0, _contribution(session, 0, round_id=7, seed=False))
    agg.receive(1, _contribution(session, 1, round_id=7))
    (out,) = agg.receive(2, _contribution(session, 2, round_id=7))
    with pytest.raises(StageError):
        agg.receive(2, _contribution(session, 2, round_id=7, seed=False))
    (back,) = kh.receive(AGGREGATOR, out.payload)
    with pytest.raises(DuplicateMessageError):  # one decryption per round
        kh.receive(AGGREGATOR, out.payload)
    with pytest.raises(WrongRoundError):  # and no seed of that round is taken any more
        _contribution(session, 0, round_id=7)
    agg.receive(KEYHOLDER, back.payload)
    assert agg.done and np.max(np.abs(agg.result().mean - np.linspace(-1, 1, 5))) <= 1e-3
    assert abs(agg.result().total_weight - 4.5) <= 1e-3


def test_dropout_below_minimum_raises(session) -> None:
    params, kh = session
    agg = PackedAggregator(kh.public_context(), params, [0, 1, 2], dim=5, weight_bound=2.0, round_id=11,
                           min_contributors=2)
    agg.receive(0, _contribution(session, 0, round_id=11))
    with pytest.raises(DropoutError):
        agg.close_stage()
    assert agg.stage == "failed"


def test_bad_inputs_and_configurations_refused(session) -> None:
    params, kh = session
    c = PackedClient(0, kh.public_context(), params, weight_bound=2.0, tag_key=granted_tag_key(kh, 0))
    for x, w in ((np.array([0.0, np.nan]), 1.0), (np.array([1.0, 0.2]), 2.5), (np.array([0.9]), 0.0),
                 (np.array([[0.1]]), 1.0), (np.array([1.0001, 0.0]), 2.0), (np.array([0.5]), True),
                 (np.array([0.5]), "1")):
        with pytest.raises(MalformedUpdateError):
            c.start(x, w)
    assert c.stage == "ready"
    with pytest.raises(ConfigurationError):  # more participants than the lanes have headroom for
        PackedAggregator(kh.public_context(), params, range(9), dim=5)
    with pytest.raises(ConfigurationError):
        build_round(range(10), dim=3, weights={i: 1.0 for i in range(10)}, graph_seed=bytes(16), max_cohort=8)
    with pytest.raises(ConfigurationError):  # context loaded for another layout
        PackedClient(0, kh.public_context(), PackedParams(max_cohort=1000))


def test_corrupt_ciphertexts_inside_valid_messages_refused(session) -> None:
    """A well-formed message whose chunk is not a fresh ciphertext of this session is refused before adding."""
    params, kh = session
    agg = PackedAggregator(kh.public_context(), params, [0, 1], dim=5, weight_bound=2.0, round_id=21)
    good = PackedContribution.from_bytes(_contribution(session, 0, round_id=21, seed=False))
    chunk = good.chunks[0]
    for bad_chunks in ((chunk[: len(chunk) // 2],), (b"\x00" * 64,), (chunk, chunk), (b"\xff" * len(chunk),)):
        bad = PackedContribution(round_id=21, client_id=0, session_id=good.session_id, dim=5, first=0,
                                 sealed_tags=b"", chunks=bad_chunks)
        with pytest.raises(MalformedMessageError):
            agg.receive(0, bad.to_bytes())
    other = PackedKeyHolder(PackedParams(max_cohort=8))  # same layout, other key: session differs
    with pytest.raises(MalformedMessageError):
        agg.receive(0, PackedClient(0, other.public_context(), params, weight_bound=2.0, round_id=21,
                                    tag_key=granted_tag_key(other, 0))
                    .start(np.zeros(5), 1.0)[1].payload)
    assert agg.received == () and agg.receive(0, good.to_bytes()) == []


def test_contexts_of_other_schemes_or_layouts_refused(session) -> None:
    from secagg.ckks import KeyHolder
    params, kh = session
    with pytest.raises(ConfigurationError, match="BFV"):
        load_public_context(KeyHolder("add-only").public_context(), params, need_public_key=True)
    with pytest.raises(ConfigurationError, match="plaintext modulus"):  # 3 lanes of 15 bits: another t
        load_public_context(kh.public_context(), PackedParams(max_cohort=2), need_public_key=True)
    with pytest.raises(ConfigurationError):
        load_public_context(b"not a context", params, need_public_key=True)
    context, _ = unbundle(kh.public_context())
    with pytest.raises(ConfigurationError):  # a bare context without the key holder's sealing key
        load_public_context(context, params, need_public_key=True)
