"""Every refusal of the CKKS roles has a named error, and a refused message changes nothing: the round still
completes for the other clients with the right result. Attacks by a deviating aggregator: test_he_malicious."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import tenseal as ts

from secagg.he_keyholder import granted_tag_key
from secagg.ckks import CKKSAggregator, CKKSClient, KeyHolder
from secagg.ckks.messages import CKKSAggregate, CKKSContribution, CKKSResult
from secagg.errors import AuthenticationError, ConfigurationError, DecryptionError, DropoutError, \
    DuplicateMessageError, KeyMisuseError, MalformedMessageError, MalformedUpdateError, StageError, \
    TooFewContributorsError, UnknownClientError, VerificationError, WrongRoundError
from secagg.he_round import bundle, unbundle
from secagg.roles import AGGREGATOR, KEYHOLDER

ROUNDS = itertools.count(1)
DIM = 5000  # two chunks at N=8192, so chunk-count checks are exercised
XS = [np.linspace(-1, 1, DIM) * s for s in (1.0, -0.5, 0.25)]
WS = {0: 1.0, 1: 2.0, 2: 3.0}


@pytest.fixture(scope="module")
def kh() -> KeyHolder:
    return KeyHolder()


@pytest.fixture(scope="module")
def other() -> KeyHolder:
    return KeyHolder()


@pytest.fixture(scope="module")
def contributions(kh):
    """round id -> client id -> (seed bytes, contribution bytes) for two rounds, made once."""
    out = {}
    for rid in (101, 102):
        out[rid] = {}
        for i in range(3):
            seed, contribution = CKKSClient(i, kh.public_context(), round_id=rid,
                                              tag_key=granted_tag_key(kh, i)).start(XS[i], WS[i])
            out[rid][i] = (seed.payload, contribution.payload)
    return out


def _expected(ids) -> np.ndarray:
    return sum(WS[i] * XS[i] for i in ids) / sum(WS[i] for i in ids)


def _finish(agg: CKKSAggregator, kh: KeyHolder, outs) -> np.ndarray:
    (to_kh,) = outs
    (back,) = kh.receive(AGGREGATOR, to_kh.payload)
    assert agg.receive(KEYHOLDER, back.payload) == [] and agg.done
    return agg.result().mean


def _rewrap(payload: bytes, **changes) -> bytes:
    msg = CKKSContribution.from_bytes(payload)
    return dataclasses.replace(msg, **changes).to_bytes()


def test_aggregator_refuses_bad_contributions_and_still_completes(kh, other, contributions) -> None:
    good = {i: c for i, (_, c) in contributions[101].items()}
    stale = {i: c for i, (_, c) in contributions[102].items()}
    for i, (seed, _) in contributions[101].items():
        kh.receive(i, seed)
    agg = CKKSAggregator(kh.public_context(), [0, 1, 2], dim=DIM, round_id=101)
    chunks = CKKSContribution.from_bytes(good[1]).chunks
    foreign = CKKSClient(1, other.public_context(), round_id=101,
                         tag_key=granted_tag_key(other, 1)).start(XS[1], 1.0)[1].payload
    unreduced = b"\xff" * len(chunks[0])  # every residue at 2^bits - 1 >= q
    bad = [
        (1, stale[1], WrongRoundError),
        (7, good[1], UnknownClientError),
        (2, good[1], AuthenticationError),
        (1, good[1][:-1], MalformedMessageError),
        (1, _rewrap(good[1], chunks=(chunks[0][:len(chunks[0]) // 2], chunks[1])), MalformedMessageError),
        (1, _rewrap(good[1], chunks=(chunks[0], b"\x00" * 64)), MalformedMessageError),
        (1, _rewrap(good[1], chunks=chunks[:1]), MalformedMessageError),
        (1, _rewrap(good[1], chunks=(chunks[0], unreduced)), MalformedMessageError),
        (1, _rewrap(good[1], dim=DIM - 1), MalformedMessageError),
        (1, foreign, MalformedMessageError),  # encrypted under another key holder's key
    ]
    assert agg.receive(0, good[0]) == []
    for sender, payload, err in bad:
        with pytest.raises(err):
            agg.receive(sender, payload)
        assert agg.stage == "collect" and agg.received == (0,)
    with pytest.raises(DuplicateMessageError):
        agg.receive(0, good[0])
    assert agg.receive(1, good[1]) == []
    mean = _finish(agg, kh, agg.receive(2, good[2]))
    assert np.max(np.abs(mean - _expected([0, 1, 2]))) <= 1e-6


def test_aggregator_stage_rules(kh, contributions) -> None:
    good = {i: c for i, (_, c) in contributions[102].items()}
    for i, (seed, _) in contributions[102].items():
        kh.receive(i, seed)
    agg = CKKSAggregator(kh.public_context(), [0, 1, 2], dim=DIM, round_id=102)
    with pytest.raises(StageError):
        agg.result()
    with pytest.raises(StageError):
        agg.receive(KEYHOLDER, b"anything")  # no aggregate sent yet
    agg.receive(2, good[2])
    agg.receive(0, good[0])
    outs = agg.close_stage()  # client 1 is silent: aggregate the two that came
    assert agg.stage == "finalize" and agg.close_stage() == []
    with pytest.raises(StageError):
        agg.receive(1, good[1])  # late
    (to_kh,) = outs
    (back,) = kh.receive(AGGREGATOR, to_kh.payload)
    res = CKKSResult.from_bytes(back.payload)
    for forged, err in [(dataclasses.replace(res, round_id=7), WrongRoundError),
                        (dataclasses.replace(res, contributors=(0, 1)), MalformedMessageError),
                        (dataclasses.replace(res, values=res.values[:-1]), MalformedMessageError)]:
        with pytest.raises(err):
            agg.receive(KEYHOLDER, forged.to_bytes())
    agg.receive(KEYHOLDER, back.payload)
    r = agg.result()
    assert r.contributors == (0, 2) and r.dropped == (1,) and abs(r.total_weight - 4.0) < 1e-6
    assert np.max(np.abs(r.mean - _expected([0, 2]))) <= 1e-6
    with pytest.raises(StageError):
        agg.close_stage()


def test_aggregator_dropout_below_minimum(kh, contributions) -> None:
    agg = CKKSAggregator(kh.public_context(), [0, 1, 2], dim=DIM, round_id=101, min_contributors=2)
    agg.receive(1, contributions[101][1][1])
    with pytest.raises(DropoutError):
        agg.close_stage()
    assert agg.stage == "failed"
    with pytest.raises(StageError):
        agg.receive(0, contributions[101][0][1])


def test_aggregator_configuration_refusals(kh) -> None:
    ctx = kh.public_context()
    for kwargs in [dict(participants=[], dim=3), dict(participants=[0, 0], dim=3), dict(participants=[-1, 0], dim=3),
                   dict(participants=[0, 1], dim=0), dict(participants=[0, 1], dim=3, min_contributors=3),
                   dict(participants=[0, 1], dim=True)]:
        with pytest.raises(ConfigurationError):
            CKKSAggregator(ctx, **kwargs)
    with pytest.raises(ConfigurationError):
        CKKSAggregator(b"not a context", [0, 1], dim=3)


def _aggregate(kh: KeyHolder, rid: int, ids: list[int], dim: int = 3, seeds: bool = True) -> bytes:
    agg = CKKSAggregator(kh.public_context(), ids, dim=dim, round_id=rid, min_contributors=1)
    outs = []
    for i in ids:
        seed, contribution = CKKSClient(i, kh.public_context(), round_id=rid,
                                              tag_key=granted_tag_key(kh, i)).start(np.full(dim, 0.5), 1.0)
        if seeds:
            kh.receive(i, seed.payload)
        outs = agg.receive(i, contribution.payload)
    return outs[0].payload


def test_keyholder_refusals(kh, other, contributions) -> None:
    rid = next(ROUNDS)
    with pytest.raises(TooFewContributorsError):  # an "aggregate" of one client is that client's update
        kh.receive(AGGREGATOR, _aggregate(kh, rid, [3]))
    strict = KeyHolder(min_contributors=3)
    with pytest.raises(TooFewContributorsError):
        strict.receive(AGGREGATOR, _aggregate(strict, rid, [0, 1]))
    with pytest.raises(MalformedMessageError):  # a single contribution is never decrypted
        kh.receive(AGGREGATOR, contributions[101][0][1])
    with pytest.raises(DecryptionError):
        kh.receive(AGGREGATOR, _aggregate(other, rid, [0, 1]))
    payload = _aggregate(kh, rid, [0, 1])
    with pytest.raises(AuthenticationError):
        kh.receive(0, payload)
    msg = CKKSAggregate.from_bytes(payload)
    for forged in [dataclasses.replace(msg, chunks=msg.chunks * 2), dataclasses.replace(msg, dim=5000),
                   dataclasses.replace(msg, chunks=(msg.chunks[0][:-100],)),
                   dataclasses.replace(msg, dim=1 << 40)]:  # huge dims are refused by arithmetic, not allocation
        with pytest.raises(MalformedMessageError):
            kh.receive(AGGREGATOR, forged.to_bytes())
    assert rid not in kh.finalized_rounds  # refusals consumed nothing
    (out,) = kh.receive(AGGREGATOR, payload)
    res = CKKSResult.from_bytes(out.payload)
    assert out.to == AGGREGATOR and res.contributors == (0, 1)
    assert np.allclose(res.values, [1.0, 1.0, 1.0, 2.0], atol=1e-6)
    with pytest.raises(DuplicateMessageError):  # one decryption per round: no differencing of two subsets
        kh.receive(AGGREGATOR, _aggregate(kh, rid, [0, 2], seeds=False))
    with pytest.raises(ConfigurationError):
        KeyHolder(min_contributors=1)


def test_keyholder_needs_every_named_seed_and_a_missing_one_consumes_nothing(kh) -> None:
    rid = next(ROUNDS)
    ctx = kh.public_context()
    agg = CKKSAggregator(ctx, [0, 1], dim=3, round_id=rid)
    seeds = {}
    outs = []
    for i in (0, 1):
        seed, contribution = CKKSClient(i, ctx, round_id=rid, tag_key=granted_tag_key(kh, i)).start(np.full(3, 0.25), 2.0)
        seeds[i] = seed.payload
        outs = agg.receive(i, contribution.payload)
    kh.receive(0, seeds[0])
    with pytest.raises(VerificationError, match=r"no pad seed from clients \[1\]"):
        kh.receive(AGGREGATOR, outs[0].payload)
    assert rid not in kh.finalized_rounds
    with pytest.raises(AuthenticationError):  # without identities a seed must come from its own client
        kh.receive(0, seeds[1])
    with pytest.raises(DuplicateMessageError):
        kh.receive(0, seeds[0])
    kh.receive(1, seeds[1])
    (back,) = kh.receive(AGGREGATOR, outs[0].payload)
    assert np.allclose(CKKSResult.from_bytes(back.payload).values, [1.0, 1.0, 1.0, 4.0], atol=1e-6)
    with pytest.raises(WrongRoundError):  # a seed for a round already decrypted is useless and refused
        kh.receive(0, seeds[0])


def test_client_rules(kh) -> None:
    c = CKKSClient(0, kh.public_context(), tag_key=granted_tag_key(kh, 0))
    for update, weight in [(np.array([1.0, np.nan]), 1.0), (np.array([np.inf]), 1.0), (np.zeros((2, 2)), 1.0),
                           (np.array([]), 1.0), (np.ones(3), 0.0), (np.ones(3), float("inf")),
                           (np.full(3, 1e15), 1.0), (np.ones(3), True), (np.ones(3), "1.0"),
                           (np.ones(3), np.array([1.0]))]:
        with pytest.raises(MalformedUpdateError):
            c.start(update, weight)
        assert c.stage == "ready"
    small = KeyHolder("add-only")
    pre = CKKSClient(0, small.public_context(), max_cohort=1000, tag_key=granted_tag_key(small, 0))
    with pytest.raises(MalformedUpdateError):  # 1000 such contributions could wrap the 2^18 sum bound
        pre.start(np.ones(3), 300.0)
    seed, out = c.start(np.ones(3), 1.0)
    assert seed.to == KEYHOLDER and out.to == AGGREGATOR and c.done
    with pytest.raises(StageError):
        c.start(np.ones(3), 1.0)
    with pytest.raises(StageError):
        c.receive(out.payload)
    for bad in [dict(client_id=-1), dict(client_id=0, round_id=-2), dict(client_id=0, max_cohort=0)]:
        with pytest.raises(ConfigurationError):
            CKKSClient(public_context=kh.public_context(), **bad)


def test_secret_key_never_leaves_the_keyholder(kh) -> None:
    context, seal_key = unbundle(kh.public_context())
    public = ts.context_from(context)
    assert not public.is_private() and not public.has_secret_key() and public.has_public_key()
    assert not public.has_relin_keys() and not public.has_galois_keys()
    vec = ts.ckks_vector(public, [0.25, -0.5])
    with pytest.raises(ValueError):
        vec.decrypt()  # the public context cannot decrypt
    private = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    private.global_scale = 2**40
    secret_bytes = bundle(private.serialize(save_secret_key=True), seal_key)
    with pytest.raises(KeyMisuseError):
        CKKSAggregator(secret_bytes, [0, 1], dim=3)
    with pytest.raises(KeyMisuseError):
        CKKSClient(0, secret_bytes)
    private.make_context_public()
    CKKSAggregator(bundle(private.serialize(), seal_key), [0, 1], dim=3)  # without its secret key: accepted


def test_non_ckks_context_and_bad_bundles_refused(kh) -> None:
    _, seal_key = unbundle(kh.public_context())
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 4096, plain_modulus=1032193, coeff_mod_bit_sizes=[60, 49])
    bfv.make_context_public()
    with pytest.raises(ConfigurationError):
        CKKSAggregator(bundle(bfv.serialize(), seal_key), [0, 1], dim=3)
    context, _ = unbundle(kh.public_context())
    for bad in (context, bundle(context, bytes(32)), kh.public_context()[:20]):  # bare context, low-order key
        with pytest.raises(ConfigurationError):
            CKKSClient(0, bad)
