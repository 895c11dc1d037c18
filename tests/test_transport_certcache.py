"""Signed masking rounds name certificates by a roster digest of fingerprints: the client's verified-certificate
cache, the aggregator's ``Certificates`` service, and the float32 model in tasks."""

from __future__ import annotations

import datetime as dt
import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import errors as E
from training.services import wire
from training.services.pki.certs import Credentials, SigningIdentity, init_certs, issue, verify_signing_identity
from training.services.loopback import Deployment, FixedSource
from training.services.pki.peers import CertificateMismatchError, PeerCertificates, roster_digest

N = 4


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with clients 0..N-1, a second CA with the same names, and everyone's signing certificate."""
    home, other = tmp_path_factory.mktemp("ca"), tmp_path_factory.mktemp("other-ca")
    init_certs(home, N)
    init_certs(other, N)
    ca = (home / "ca.pem").read_bytes()
    pems = {c: Credentials.load(home, c).sign_cert.decode() for c in range(N)}
    foreign = {c: Credentials.load(other, c).sign_cert.decode() for c in range(N)}
    return home, ca, pems, foreign


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Server:
    """A stand-in for the aggregator's Certificates reply: serves ``pems``, records what was asked."""

    def __init__(self, pems: dict[int, str]) -> None:
        self.pems, self.asked = dict(pems), []

    def __call__(self, ids: list[int]) -> dict[int, str]:
        self.asked.append(list(ids))
        return {c: self.pems[c] for c in ids if c in self.pems}


def _listing(ca: bytes, pems: dict[int, str]) -> dict[int, str]:
    return {c: verify_signing_identity(ca, p, c).fingerprint for c, p in pems.items()}


def test_cold_cache_fetches_verifies_then_uses_fingerprints_only(pki):
    _, ca, pems, _ = pki
    cache, server = PeerCertificates(ca), Server(pems)
    keys = cache.resolve(_listing(ca, pems), server)
    assert server.asked == [list(range(N))] and cache.fetched == N and len(cache) == N
    for c in range(N):  # the same keys as an independent verification of each certificate
        assert _raw(keys[c]) == _raw(verify_signing_identity(ca, pems[c], c).key)
    again = cache.resolve(_listing(ca, pems), server)
    assert server.asked == [list(range(N))]  # nothing fetched: every fingerprint was cached
    assert {c: _raw(k) for c, k in again.items()} == {c: _raw(k) for c, k in keys.items()}


def test_unknown_fingerprint_falls_back_to_fetch_and_a_mismatch_is_refused(pki):
    _, ca, pems, _ = pki
    cache = PeerCertificates(ca)
    cache.resolve(_listing(ca, pems), Server(pems))
    listing = _listing(ca, pems) | {1: secrets.token_hex(32)}  # a fingerprint no certificate of client 1 has
    server = Server(pems)  # serves the cached (genuine) certificate, whose fingerprint is another
    with pytest.raises(CertificateMismatchError):
        cache.resolve(listing, server)
    assert server.asked == [[1]]  # only the unknown one was fetched; the others came from the cache
    assert cache.cached(1, _listing(ca, pems)[1]) is not None  # the refused fetch changed nothing


def test_cached_certificate_is_used_only_for_its_own_client(pki):
    _, ca, pems, _ = pki
    cache = PeerCertificates(ca)
    cache.resolve(_listing(ca, pems), Server(pems))
    swapped = {1: _listing(ca, pems)[2]}  # client 2's (cached) fingerprint claimed for client 1
    assert cache.cached(1, swapped[1]) is None
    with pytest.raises(E.AuthenticationError):  # fetched and verified: the certificate names client-2
        cache.resolve(swapped, Server({1: pems[2]}))


def test_foreign_ca_certificate_is_refused_even_with_its_own_fingerprint(pki):
    _, ca, _, foreign = pki
    cache = PeerCertificates(ca)
    with pytest.raises(E.AuthenticationError):
        cache.resolve({2: _fp(foreign[2])}, Server({2: foreign[2]}))
    assert len(cache) == 0


def _fp(pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()


def test_reissued_certificate_is_reverified_and_replaces_the_old(pki):
    home, ca, pems, _ = pki
    cache = PeerCertificates(ca)
    cache.resolve(_listing(ca, pems), Server(pems))
    issue(home, 3)  # client 3 gets a new signing key and certificate from the same CA
    new = Credentials.load(home, 3).sign_cert.decode()
    try:
        server = Server(pems | {3: new})
        keys = cache.resolve(_listing(ca, pems | {3: new}), server)
        assert server.asked == [[3]] and len(cache) == N  # one entry per client: the new one replaced the old
        assert _raw(keys[3]) == _raw(verify_signing_identity(ca, new, 3).key) != _raw(
            verify_signing_identity(ca, pems[3], 3).key)
        assert cache.cached(3, _fp(pems[3])) is None  # the old certificate is no longer trusted without a fetch
    finally:
        pems[3] = new  # keep the module fixture consistent with the files on disk


def test_missing_certificate_malformed_listing_and_expired_entry(pki):
    _, ca, pems, _ = pki
    cache = PeerCertificates(ca)
    with pytest.raises(CertificateMismatchError):
        cache.resolve(_listing(ca, pems), Server({0: pems[0]}))
    assert len(cache) == 0  # nothing is cached from a fetch that failed as a whole
    for bad in ({"1": "0" * 64}, {1: "abc"}, {1: "G" * 64}, {1: 5}, {-1: "0" * 64}, ["1"]):
        with pytest.raises(E.MalformedMessageError):
            cache.resolve(bad, Server(pems))
    ident = verify_signing_identity(ca, pems[0], 0)
    cache._store(SigningIdentity(0, ident.pem, ident.key, ident.fingerprint,
                                 dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    assert cache.cached(0, ident.fingerprint) is None  # an expired certificate is never used from the cache


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, N - 1), st.sampled_from(["genuine", "random", "other-id", "foreign"])),
                min_size=1, max_size=8))
def test_resolve_returns_only_keys_of_ca_certificates_with_the_named_fingerprint(pki, steps):
    """Whatever the aggregator lists and serves, every key returned is the one of the CA-issued certificate for
    that id whose fingerprint the round names; anything else is a named AuthenticationError."""
    _, ca, pems, foreign = pki
    cache = PeerCertificates(ca)
    for c, how in steps:
        served = {"genuine": pems[c], "random": pems[c], "other-id": pems[(c + 1) % N], "foreign": foreign[c]}[how]
        listed = secrets.token_hex(32) if how == "random" else _fp(served)
        try:
            keys = cache.resolve({c: listed}, Server({c: served}))
        except E.AuthenticationError:
            assert how != "genuine"
            continue
        assert how == "genuine" and _raw(keys[c]) == _raw(verify_signing_identity(ca, pems[c], c).key)


def test_rounds_fetch_certificates_once_and_a_restarted_client_refetches():
    rng = np.random.default_rng(5)
    updates, weights = [rng.uniform(-1, 1, 24) for _ in range(3)], [1.0, 2.0, 3.0]
    sources = {i: FixedSource(u, w) for i, (u, w) in enumerate(zip(updates, weights))}
    expected = sum(w * u for w, u in zip(weights, updates)) / sum(weights)
    with Deployment("masking", sources, 24, rounds=3) as dep:
        seen = []

        def on_task(header):
            seen.append(header)
            if header["round"] == 1:  # client 0 "restarts" with an empty cache before round 1
                dep.agents[0].peers = PeerCertificates(dep.agents[0].creds.ca)
            with pytest.raises(E.UnknownClientError):  # the service names only the round's own certificates
                dep.coordinator.certificates(0, header["round_id"], [7])

        dep.agents[0].on_task = on_task
        records = dep.run(timeout=120)
        fetched = {c: a.peers.fetched for c, a in dep.agents.items()}
        model = dep.coordinator.state.model
    assert [r.status for r in records] == ["done"] * 3
    assert records[0].cert_bytes > 0 and records[1].cert_bytes > 0 and records[2].cert_bytes == 0
    assert records[1].cert_bytes < records[0].cert_bytes  # round 1: only client 0 fetched
    assert fetched == {0: 3, 1: 2, 2: 2}  # a cold client fetches its peers' certificates; its own is seeded
    for r in records:
        assert np.allclose(r.result.mean, expected, atol=1e-4)
    digest = seen[0]["params"]["identities"]
    assert isinstance(digest, str) and len(digest) == 64 and all(h["params"]["identities"] == digest for h in seen)
    assert np.allclose(model, 3 * expected, atol=1e-4)


def test_roster_digest_hits_the_cache_and_any_change_goes_through_the_listing(pki):
    _, ca, pems, _ = pki
    cohort, listing = list(range(N)), _listing(ca, pems)
    digest, server, rosters = roster_digest(listing), Server(pems), []

    def roster(table=listing):
        rosters.append(1)
        return table

    cache = PeerCertificates(ca)
    keys = cache.resolve_roster(cohort, digest, roster, server)
    assert len(rosters) == 1 and server.asked == [cohort]  # cold: the listing, then every certificate
    assert cache.resolve_roster(cohort, digest, roster, server).keys() == keys.keys()
    assert len(rosters) == 1 and len(server.asked) == 1  # warm: the digest matched, nothing fetched
    assert cache.resolve_roster(cohort[:3], roster_digest({c: listing[c] for c in cohort[:3]}), roster, server)
    assert len(rosters) == 1  # a sub-cohort of cached peers also needs no fetch
    tampered = listing | {2: listing[1]}
    for table, want in ((tampered, digest),  # a listing that does not hash to the task's digest
                        ({c: listing[c] for c in cohort[:3]}, roster_digest(listing)),  # one that omits a member
                        (tampered, roster_digest(tampered))):  # hashes, but names client 1's certificate for 2
        with pytest.raises(E.AuthenticationError):
            PeerCertificates(ca).resolve_roster(cohort, want, lambda t=table: t, server)
    other = listing | {1: secrets.token_hex(32)}  # the round commits to a certificate of client 1 no one cached
    with pytest.raises(CertificateMismatchError):  # so the warm cache is not used: listing, then a failed fetch
        cache.resolve_roster(cohort, roster_digest(other), lambda: other, server)
    assert len(rosters) == 1 and server.asked[-1] == [1]
    with pytest.raises(CertificateMismatchError):  # a genuine listing that is not the one the digest commits to
        PeerCertificates(ca).resolve_roster(cohort, roster_digest(other), roster, server)
    assert roster_digest(listing) != roster_digest(tampered)
    assert roster_digest({1: "a" * 64, 12: "b" * 64}) != roster_digest({11: "a" * 64, 2: "b" * 64})


def test_model_travels_as_float32():
    model = np.array([0.1, -3.5e-9, 1e30, 7.0])
    body = wire.model_bytes(model)
    assert len(body) == 4 * model.size
    assert np.array_equal(wire.model_from(body, 4), model.astype(np.float32).astype(np.float64))
    for bad, dim in ((body[:-1], None), (body, 5), (b"", None)):
        with pytest.raises(E.MalformedMessageError):
            wire.model_from(bad, dim)
