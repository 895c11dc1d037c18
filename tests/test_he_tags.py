"""Exact-sum verification of HE aggregates (issue 25.1): tags bind the aggregate to the named contributions.

The attack: the aggregator encrypts a term of its own choosing under the public key (zero guards, no pad) and adds
it to the honest sum. Pads cancel, guards stay zero, so before tags the key holder released Σ + δ; the test with
the tag check switched off shows that release, and the real key holder must refuse it. A colluding client can
still add a term through its own tags (what it could add by encrypting it itself), shown as such.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import AuthenticationError, DecryptionError, MalformedMessageError, UnknownClientError, \
    VerificationError
from secagg.hazmat import rlwe
from secagg.hazmat import sign as ed25519
from secagg.he_pads import open_seed, seal_tags
from secagg.he_keyholder import HEKeyHolder, granted_tag_key
from secagg.he_round import TagKeyRequest
from secagg.he_tags import TagRequest, compute_tags, soundness_bits, tag_count
from secagg.messages import decode
from secagg.packed import PackedKeyHolder, PackedParams
from secagg.roles import AGGREGATOR
from tests.test_he_malicious import DIM, ROUNDS, XS, Scheme, _packed, _refused, _residues


@pytest.fixture(scope="module", params=["ckks", "packed"])
def scheme(request) -> Scheme:
    return Scheme(request.param)


def _with_added_term(scheme: Scheme, rid: int, delta: np.ndarray) -> tuple[list, np.ndarray]:
    """Three honest contributions of round ``rid`` and their sum plus a term the aggregator encrypted itself
    (public context only: the encryption every client runs, without a pad)."""
    cs = [scheme.contribute(i, rid, XS[i]) for i in range(3)]
    lay, acc = scheme.layout(), _residues(scheme, cs)
    for k, raw in enumerate(_ciphertexts(scheme.client(0, rid), delta)):
        rlwe.add_into(acc[k:k + 1], rlwe.extract(raw, lay)[None], lay)
    return cs, acc


def _ciphertexts(client, x: np.ndarray) -> list[bytes]:
    """The client's unpadded ciphertexts of ``[x, 1, guards]`` (what anyone with the public key can make)."""
    return [client._encrypt_one(lanes) for lanes in client._lanes(x, x.shape[0], 1.0)]


def _released(scheme: Scheme, payload: bytes) -> np.ndarray:
    return scheme.result(payload).astype(np.float64)


def test_an_aggregator_added_term_would_pass_without_tags(scheme, monkeypatch) -> None:
    """The attack is real: with the tag check switched off the key holder releases the forged sum."""
    rid = next(ROUNDS)
    cs = [scheme.contribute(i, rid, XS[i]) for i in range(3)]
    (honest,) = scheme.kh.receive(AGGREGATOR, scheme.aggregate(rid, (0, 1, 2), _packed(scheme, _residues(scheme, cs)))
                                  .to_bytes())
    rid = next(ROUNDS)
    delta = np.zeros(DIM)
    delta[0] = 0.25
    _, forged = _with_added_term(scheme, rid, delta)
    monkeypatch.setattr(HEKeyHolder, "_check_tags", lambda *args: None)
    (out,) = scheme.kh.receive(AGGREGATOR, scheme.aggregate(rid, (0, 1, 2), _packed(scheme, forged)).to_bytes())
    got, want = _released(scheme, out.payload), _released(scheme, honest.payload)
    assert not np.array_equal(got, want)
    if scheme.name == "ckks":
        assert abs(got[0] - want[0] - 0.25) < 1e-3 and abs(got[DIM] - want[DIM] - 1.0) < 1e-3


@pytest.mark.parametrize("size", [100.0, 1e-3])
def test_an_aggregator_added_term_is_refused(scheme, size: float) -> None:
    rid = next(ROUNDS)
    delta = np.zeros(DIM)
    delta[0] = size if scheme.name == "ckks" else min(size, 0.25)
    _, forged = _with_added_term(scheme, rid, delta)
    _refused(scheme, scheme.aggregate(rid, (0, 1, 2), _packed(scheme, forged)))


def test_one_changed_residue_anywhere_is_refused(scheme) -> None:
    rid = next(ROUNDS)
    cs = [scheme.contribute(i, rid, XS[i]) for i in range(2)]
    lay, acc = scheme.layout(), _residues(scheme, cs)
    acc[-1, 1, -1, 5] = (int(acc[-1, 1, -1, 5]) + 1) % lay.moduli[-1]  # c1, last prime: a noise-sized change
    _refused(scheme, scheme.aggregate(rid, (0, 1), _packed(scheme, acc)))


def test_a_colluding_client_can_add_only_through_its_own_tags(scheme) -> None:
    """What remains: client 1 (colluding, so it knows the tag key) seals tags for its contribution plus δ. The
    key holder releases Σ + δ, exactly what client 1 could have added by encrypting x_1 + δ itself."""
    rid = next(ROUNDS)
    kh, lay = scheme.kh, scheme.layout()
    seeds, cs = {}, []
    for i in range(3):
        seed, contribution = scheme.client(i, rid).start(XS[i], 1.0)
        seeds[i], _ = seed, cs.append(decode(contribution.payload))
    delta = np.zeros(DIM)
    delta[1] = 0.125
    term = np.stack([rlwe.extract(raw, lay) for raw in _ciphertexts(scheme.client(1, rid), delta)])
    forged = _residues(scheme, cs)
    rlwe.add_into(forged, term, lay)
    for i in range(3):
        kh.receive(i, seeds[i].payload)
    # client 1 seals tags of (its contribution + δ) under its seed: possible only with its own tag key
    own = rlwe.unpack(cs[1].chunks, lay)
    rlwe.add_into(own, term, lay)
    key = granted_tag_key(kh, 1)
    raw_seed = open_seed(decode(seeds[1].payload), kh._seal, None)
    tags = compute_tags(own, key, lay, session_id=kh.session_id, round_id=rid)
    resealed = seal_tags(raw_seed, tags.astype("<u8").tobytes(), session_id=kh.session_id, round_id=rid,
                         client_id=1)
    agg = scheme.aggregate(rid, (0, 1, 2), _packed(scheme, forged),
                           tags=(cs[0].sealed_tags, resealed, cs[2].sealed_tags))
    (out,) = kh.receive(AGGREGATOR, agg.to_bytes())
    if scheme.name == "ckks":
        got = _released(scheme, out.payload)
        assert abs(got[1] - sum(XS[i][1] for i in range(3)) - 0.125) < 1e-3


def test_tags_are_linear_and_catch_any_sparse_change() -> None:
    layout = Scheme("ckks").layout()
    key, sid = os.urandom(32), os.urandom(32)
    rng = np.random.default_rng(0)

    @settings(max_examples=25, deadline=None)
    @given(st.integers(1, 4), st.integers(0, 2**62), st.integers(0, 10**6), st.integers(1, 2**61))
    def check(chunks: int, seed: int, where: int, by: int) -> None:
        q = layout.q()
        shape = (chunks, 2, len(layout.moduli), layout.degree)
        a = np.random.default_rng(seed).integers(0, 2**62, size=shape, dtype=np.uint64) % q
        b = rng.integers(0, 2**62, size=shape, dtype=np.uint64) % q
        s = a.copy()
        rlwe.add_into(s, b, layout)
        ta, tb, ts_ = (compute_tags(x, key, layout, session_id=sid, round_id=7) for x in (a, b, s))
        moduli = np.array(layout.moduli, dtype=object)[:, None]
        assert np.array_equal((ta.astype(object) + tb.astype(object)) % moduli, ts_.astype(object))
        idx = np.unravel_index(where % s.size, s.shape)
        prime = layout.moduli[idx[2]]
        if by % prime:
            s[idx] = (int(s[idx]) + by) % prime
            assert not np.array_equal(compute_tags(s, key, layout, session_id=sid, round_id=7), ts_)

    check()


def test_soundness_is_at_least_128_bits_for_every_size() -> None:
    for layout in (Scheme("ckks").layout(), Scheme("packed").layout()):
        for rows in (2, 490, 65_700, 2**17):
            assert soundness_bits(layout, rows) >= 128
            assert tag_count(layout, rows) <= 8


def test_the_tag_key_goes_to_the_requesting_client_only() -> None:
    keys = {i: ed25519.generate() for i in range(2)}
    kh = PackedKeyHolder(PackedParams(max_cohort=4), peer_identities={i: k.public_key() for i, k in keys.items()})
    bundle = kh.public_context()
    req = TagKeyRequest(bundle, 0, keys[0])
    (grant,) = kh.receive(AGGREGATOR, req.payload)  # relayed: fine, it is signed and sealed to client 0's key
    assert grant.to == 0 and len(req.open(grant.payload)) == 32
    with pytest.raises(AuthenticationError):  # the aggregator's own request for client 0 carries no signature
        kh.receive(AGGREGATOR, TagKeyRequest(bundle, 0).payload)
    with pytest.raises(AuthenticationError):  # signed by client 1 but naming client 0
        forged = decode(TagKeyRequest(bundle, 1, keys[1]).payload)
        kh.receive(AGGREGATOR, TagRequest(client_id=0, session_id=forged.session_id, ephemeral=forged.ephemeral,
                                          signature=forged.signature).to_bytes())
    with pytest.raises(UnknownClientError):
        kh.receive(AGGREGATOR, TagKeyRequest(bundle, 5).payload)
    other = TagKeyRequest(bundle, 0, keys[0])  # a grant opens only with the request that asked for it
    with pytest.raises(AuthenticationError):
        other.open(grant.payload)
    with pytest.raises((DecryptionError, MalformedMessageError)):
        req.open(grant.payload[:-20] + bytes(20))


@pytest.mark.parametrize("forge", ["empty", "other seed", "other client's"])
def test_a_contribution_without_its_own_tags_is_refused(forge: str) -> None:
    """Tags sealed empty (a client that tried to skip them), under a seed the key holder does not hold for that
    client (what an aggregator could make), or another contributor's: the sum is not released."""
    s = Scheme("ckks")
    rid = next(ROUNDS)
    cs = [s.contribute(i, rid, XS[i]) for i in range(2)]
    binding = dict(session_id=s.kh.session_id, round_id=rid, client_id=1)
    sealed = {"empty": seal_tags(os.urandom(32), b"", **binding), "other seed": seal_tags(os.urandom(32), bytes(80),
              **binding), "other client's": cs[0].sealed_tags}[forge]
    if forge == "empty":  # the right seed, no tags
        sealed = seal_tags(s.kh._seeds[rid][1][0], b"", **binding)
    agg = s.aggregate(rid, (0, 1), _packed(s, _residues(s, cs)), tags=(cs[0].sealed_tags, sealed))
    with pytest.raises(VerificationError, match="tags"):
        s.kh.receive(AGGREGATOR, agg.to_bytes())
    assert rid in s.kh.finalized_rounds


@pytest.mark.parametrize("name", ["ckks", "packed"])
def test_tags_equal_the_formula_in_python_integers(name: str) -> None:
    """The uint64 kernel gives exactly ``τ_{j,l} = β_{j,l}ᵀ · R_j · γ_{j,l} mod q_j``, with γ and β drawn as the
    module docstring states, computed here in Python integers; and a part-by-part accumulation equals the whole."""
    import math
    import struct

    from secagg.hazmat import kex, prg
    from secagg.he_tags import TagAccumulator, _widths

    layout = Scheme(name).layout()
    key, sid, rid, chunks = os.urandom(32), os.urandom(32), 11, 3
    primes, n, rows = len(layout.moduli), layout.degree, 2 * chunks
    res = np.random.default_rng(5).integers(0, 2**62, size=(chunks, 2, primes, n), dtype=np.uint64) % layout.q()
    tags, (g, b) = tag_count(layout, rows), _widths(layout, rows)
    seed = kex.derive_key(key, info=b"secagg/he/tag-round/v1" + sid + struct.pack("<q", rid), length=32)
    words = np.frombuffer(prg.keystream(seed, 4 * primes * tags * (n + rows)), dtype="<u4")
    words = words.reshape(primes, tags, n + rows).astype(object)
    want = np.zeros((primes, tags), dtype=object)
    for j, q in enumerate(layout.moduli):
        r = res[:, :, j, :].reshape(rows, n).astype(object)
        for t in range(tags):
            gamma, beta = words[j, t, :n] % (1 << g), words[j, t, n:] % (1 << b)
            want[j, t] = int(beta.dot(r.dot(gamma))) % q
    got = compute_tags(res, key, layout, session_id=sid, round_id=rid)
    assert got.dtype == np.uint64 and np.array_equal(got.astype(object), want)
    acc = TagAccumulator(key, layout, chunks=chunks, session_id=sid, round_id=rid)
    acc.add(res[:1]).add(res[1:])
    assert np.array_equal(acc.tags(), got) and math.prod(got.shape) == primes * tags
