"""CKKS and packed BFV against an actively malicious aggregator (and clients colluding with it).

The key holder must release only the sum of exactly the contributions the named clients made for this round
under this key, each at most once. Every attack of issue 10.6 is run against the real roles of both schemes: one
ciphertext labelled as a sum, relabelled and replayed rounds, a ciphertext under another key, a colluding client
absorbing an honest one, scaled or slot-masked ciphertexts. Each is refused with ``VerificationError`` (or the
round check), and the honest sum of the same cohort still goes through. A property test tampers one field of
one message at random: the result is the right sum or a named error, never a wrong sum.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.he_keyholder import granted_tag_key
from secagg.ckks import CKKSAggregator, CKKSClient, KeyHolder
from secagg.ckks.messages import CKKSAggregate, CKKSResult
from secagg.errors import DuplicateMessageError, MalformedMessageError, SecAggError, VerificationError
from secagg.hazmat import rlwe
from secagg.messages import decode
from secagg.packed import PackedAggregator, PackedClient, PackedKeyHolder, PackedParams
from secagg.packed.messages import PackedAggregate, PackedResult
from secagg.roles import AGGREGATOR
from secagg.simulation import run_round

DIM = 40
ROUNDS = itertools.count(1)


class Scheme:
    """Both HE schemes behind one test interface: roles of one session, contributions and aggregates."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "ckks":
            self.kh = KeyHolder("add-only")
        else:
            self.params = PackedParams(max_cohort=8)
            self.kh = PackedKeyHolder(self.params)
        self.ctx = self.kh.public_context()
        self.sealed: dict[tuple[int, int], bytes] = {}  # (round, client) -> the sealed tags its contribution carried

    def client(self, i: int, rid: int, kh=None):
        ctx = self.ctx if kh is None else kh.public_context()
        if self.name == "ckks":
            return CKKSClient(i, ctx, round_id=rid, max_cohort=8, tag_key=granted_tag_key(kh or self.kh, i))
        return PackedClient(i, ctx, self.params, weight_bound=2.0, round_id=rid, tag_key=granted_tag_key(kh or self.kh, i))

    def aggregator(self, ids, rid: int):
        if self.name == "ckks":
            return CKKSAggregator(self.ctx, ids, dim=DIM, round_id=rid)
        return PackedAggregator(self.ctx, self.params, ids, dim=DIM, weight_bound=2.0, round_id=rid)

    def contribute(self, i: int, rid: int, x: np.ndarray, *, seed_to_kh: bool = True):
        seed, contribution = self.client(i, rid).start(x, 1.0)
        if seed_to_kh:
            self.kh.receive(i, seed.payload)
        msg = decode(contribution.payload)
        self.sealed[(rid, i)] = msg.sealed_tags
        return msg

    def aggregate(self, rid: int, contributors, chunks, tags=None):
        """An aggregate of one part; ``tags`` default to what the aggregator holds: each named contributor's sealed
        tags of round ``rid`` (for a client it has none of, another contribution's)."""
        cls = CKKSAggregate if self.name == "ckks" else PackedAggregate
        sid = {"context_id": self.kh.context_id} if self.name == "ckks" else {"session_id": self.kh.session_id}
        if tags is None:
            tags = tuple(self.sealed.get((rid, c), next(iter(self.sealed.values()))) for c in contributors)
        return cls(round_id=rid, dim=DIM, contributors=tuple(contributors), first=0, chunks=tuple(chunks),
                   tags=tuple(tags), **sid)

    def result(self, payload: bytes) -> np.ndarray:
        return CKKSResult.from_bytes(payload).values if self.name == "ckks" else PackedResult.from_bytes(payload).slots

    def layout(self) -> rlwe.RingLayout:
        return self.kh._layout


@pytest.fixture(scope="module", params=["ckks", "packed"])
def scheme(request) -> Scheme:
    return Scheme(request.param)


XS = {i: np.linspace(-1, 1, DIM) * (0.9 - 0.2 * i) for i in range(4)}


def _residues(scheme: Scheme, msgs) -> np.ndarray:
    """The exact sum of ``msgs``' residues (what an honest aggregator forwards)."""
    lay = scheme.layout()
    acc = rlwe.unpack(msgs[0].chunks, lay)
    for m in msgs[1:]:
        rlwe.add_into(acc, rlwe.unpack(m.chunks, lay), lay)
    return acc


def _packed(scheme: Scheme, residues: np.ndarray) -> tuple[bytes, ...]:
    return tuple(rlwe.pack(residues, scheme.layout()))


def _refused(scheme: Scheme, msg) -> None:
    with pytest.raises(VerificationError):
        scheme.kh.receive(AGGREGATOR, msg.to_bytes())
    assert msg.round_id in scheme.kh.finalized_rounds  # consumed: the round cannot be probed again


def test_one_ciphertext_labelled_as_an_aggregate_is_refused(scheme) -> None:
    rid = next(ROUNDS)
    cs = [scheme.contribute(i, rid, XS[i]) for i in range(3)]
    _refused(scheme, scheme.aggregate(rid, (0, 1, 2), cs[0].chunks))


def test_relabelled_rounds_cannot_difference_two_subsets(scheme) -> None:
    """Decrypt {0,1,2} as round r, then offer {1,2} (round r's ciphertexts) as round r+1: x_0 by difference."""
    r = next(ROUNDS)
    cs = [scheme.contribute(i, r, XS[i]) for i in range(3)]
    (out,) = scheme.kh.receive(AGGREGATOR, scheme.aggregate(r, (0, 1, 2), _packed(scheme, _residues(scheme, cs)))
                               .to_bytes())
    assert out.to == AGGREGATOR
    with pytest.raises(DuplicateMessageError):  # the same round again
        scheme.kh.receive(AGGREGATOR, scheme.aggregate(r, (1, 2), _packed(scheme, _residues(scheme, cs[1:])))
                          .to_bytes())
    r2 = next(ROUNDS)
    for i in (1, 2):  # clients 1 and 2 take part in round r+1, so their seeds for it exist
        scheme.contribute(i, r2, XS[i])
    _refused(scheme, scheme.aggregate(r2, (1, 2), _packed(scheme, _residues(scheme, cs[1:]))))


def test_ciphertexts_under_another_key_claiming_this_session_are_refused(scheme) -> None:
    rid = next(ROUNDS)
    for i in (0, 1):
        scheme.contribute(i, rid, XS[i])  # the honest contributions (and their seeds) of this round
    other = Scheme(scheme.name)
    foreign = [decode(other.client(i, rid).start(XS[i], 1.0)[1].payload) for i in (0, 1)]
    _refused(scheme, scheme.aggregate(rid, (0, 1), _packed(scheme, _residues(other, foreign))))


def test_a_client_encrypting_under_other_parameters_of_the_same_ring_gets_the_sum_refused() -> None:
    """Raw residues of one ring all look alike, so the aggregator adds a contribution made for another plaintext
    modulus; the key holder then refuses the sum (the round fails, named), and never releases a wrong one."""
    here = Scheme("packed")
    wider = PackedKeyHolder(PackedParams(max_cohort=64))  # another lane layout and plaintext modulus, same ring
    rid = next(ROUNDS)
    agg = here.aggregator([0, 1], rid)
    seed, odd = PackedClient(0, wider.public_context(), wider.params, round_id=rid,
                             tag_key=granted_tag_key(wider, 0)).start(np.zeros(DIM), 1.0)
    forged = dataclasses.replace(decode(odd.payload), session_id=here.kh.session_id)
    assert agg.receive(0, forged.to_bytes()) == []  # indistinguishable to the aggregator
    honest = here.contribute(1, rid, XS[1])
    here.kh.receive(0, here.client(0, rid).start(np.zeros(DIM), 1.0)[0].payload)  # client 0's seed of this round
    (out,) = agg.receive(1, honest.to_bytes())
    with pytest.raises(VerificationError):
        here.kh.receive(AGGREGATOR, out.payload)


def test_a_colluding_client_cannot_absorb_a_missing_honest_contribution(scheme) -> None:
    """The aggregator names {0, 1, 2} but sends only 0's ciphertext plus anything colluding client 1 makes
    (including its own padded contribution): client 2's pad is unknown to both, so the residual stays."""
    rid = next(ROUNDS)
    cs = [scheme.contribute(i, rid, XS[i]) for i in range(3)]
    _refused(scheme, scheme.aggregate(rid, (0, 1, 2), _packed(scheme, _residues(scheme, cs[:2]))))


@pytest.mark.parametrize("how", ["doubled", "scaled", "dropped-chunk", "swapped-chunks"])
def test_reweighted_or_rearranged_sums_are_refused(scheme, how: str) -> None:
    rid = next(ROUNDS)
    cs = [scheme.contribute(i, rid, XS[i] if i else np.linspace(-1, 1, DIM)) for i in range(2)]
    lay = scheme.layout()
    acc = _residues(scheme, cs)
    if how == "doubled":  # client 0 counted twice
        rlwe.add_into(acc, rlwe.unpack(cs[0].chunks, lay), lay)
    elif how == "scaled":  # a plaintext multiply of the whole sum (a slot mask is a polynomial multiply too)
        acc = (acc.astype(object) * 3 % lay.q().astype(object)).astype(np.uint64)
    elif how == "dropped-chunk":  # client 1's second half left out
        acc[-1] = rlwe.unpack(cs[0].chunks, lay)[-1]
    else:
        acc = acc[::-1].copy()
    if how in ("dropped-chunk", "swapped-chunks") and acc.shape[0] == 1:
        acc[0, 1] = np.roll(acc[0, 1], 1)  # one ciphertext only: rotate c1 instead
    _refused(scheme, scheme.aggregate(rid, (0, 1), _packed(scheme, acc)))


def test_the_honest_sum_of_the_same_cohort_is_released(scheme) -> None:
    rid = next(ROUNDS)
    ids = [0, 1, 2]
    clients = {i: scheme.client(i, rid) for i in ids}
    agg = scheme.aggregator(ids, rid)
    res = run_round(clients, agg, {i: XS[i] for i in ids}, {i: 1.0 for i in ids}, finalizer=scheme.kh)
    assert np.max(np.abs(res.mean - np.mean([XS[i] for i in ids], axis=0))) < 2e-3


def test_huge_size_fields_are_refused_before_any_allocation(scheme) -> None:
    rid = next(ROUNDS)
    cs = [scheme.contribute(i, rid, XS[i]) for i in range(2)]
    msg = dataclasses.replace(scheme.aggregate(rid, (0, 1), _packed(scheme, _residues(scheme, cs))), dim=2**62)
    start = time.perf_counter()
    with pytest.raises(MalformedMessageError):
        scheme.kh.receive(AGGREGATOR, msg.to_bytes())
    assert time.perf_counter() - start < 1.0 and rid not in scheme.kh.finalized_rounds


_TAMPER = ["contribution chunk", "contribution dim", "seed sealed", "seed ephemeral", "seed round",
           "aggregate chunk", "aggregate contributors", "aggregate round"]


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    raw = bytearray(data)
    raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
    return bytes(raw)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 5), what=st.sampled_from(_TAMPER), seed=st.integers(0, 2**32 - 1))
def test_one_tampered_field_gives_the_right_sum_or_a_named_error(scheme, n: int, what: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rid = next(ROUNDS)
    ids = list(range(n))
    xs = {i: rng.uniform(-1, 1, DIM) for i in ids}
    clients = {i: scheme.client(i, rid) for i in ids}
    agg = scheme.aggregator(ids, rid)
    who = int(rng.integers(n))
    kind, _, field = what.partition(" ")
    attr = {"chunk": "chunks", "round": "round_id"}.get(field, field)

    def forge(msg, change):
        bad = object.__new__(type(msg))
        for f in dataclasses.fields(msg):
            object.__setattr__(bad, f.name, getattr(msg, f.name))
        object.__setattr__(bad, attr, change(getattr(msg, attr)))
        return bad.to_bytes()

    change = {"chunk": lambda cs: tuple(_flip(c, rng) if k == 0 else c for k, c in enumerate(cs)),
              "dim": lambda d: d + 1, "sealed": lambda b: _flip(b, rng), "ephemeral": lambda b: _flip(b, rng),
              "round": lambda r: r + 1, "contributors": lambda c: c[:-1] if len(c) > 2 else c + (99,)}[field]
    if kind in ("contribution", "seed"):
        real = clients[who].start

        def tampered(x, w):
            seed_out, contribution = real(x, w)
            if kind == "seed":
                return [dataclasses.replace(seed_out, payload=forge(decode(seed_out.payload), change)), contribution]
            return [seed_out, dataclasses.replace(contribution, payload=forge(decode(contribution.payload), change))]

        clients[who].start = tampered
        finalizer = scheme.kh
    else:
        class Tamper:
            def receive(self, sender, payload):
                msg = decode(payload)
                if sender == AGGREGATOR and not isinstance(msg, (CKKSResult, PackedResult)) and \
                        type(msg).__name__.endswith("Aggregate"):
                    payload = forge(msg, change)
                return scheme.kh.receive(sender, payload)

        finalizer = Tamper()
    try:
        res = run_round(clients, agg, xs, {i: 1.0 for i in ids}, finalizer=finalizer)
    except SecAggError:
        return  # a named error: nothing released
    ref = np.mean([xs[i] for i in res.contributors], axis=0)
    assert np.max(np.abs(res.mean - ref)) < 2e-3
