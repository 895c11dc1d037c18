"""A client's cache of verified peer signing certificates, so signed rounds name certificates by digest.

A signed masking task names its cohort's signing certificates by one :func:`roster_digest` (SHA-256 over the
sorted ``(client id, certificate fingerprint)`` pairs) instead of listing whole certificates.
:meth:`PeerCertificates.resolve_roster` turns it into the Ed25519 keys the client's role verifies signatures with:
from the cache when the certificates it holds for the cohort hash to the digest (nothing fetched), else from the
round's fingerprint listing (fetched, checked against the digest) and :meth:`PeerCertificates.resolve`.
Invariants:

* a key is used only if its certificate was verified against this client's own CA copy for exactly that client id
  (:func:`~.certs.verify_signing_identity`), is still within its validity, and has exactly the fingerprint the
  round names (directly, or through the digest); the aggregator only ever chooses *which* CA-issued certificate a
  round uses, never a key; a listing that does not hash to the task's digest is refused;
* a fingerprint that is not cached (a new peer, a re-issued certificate, an empty cache after a restart), or that
  is cached for another client id, is never trusted: its certificate is fetched from the aggregator and verified;
  a fetched certificate whose fingerprint differs from the round's is refused (:class:`CertificateMismatchError`)
  and nothing is cached from that fetch;
* at most one certificate per client id is kept (a re-issued one replaces the old), and at most ``max_entries``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secagg.errors import AuthenticationError, MalformedMessageError
from training.engine.roles import roster_digest
from training.services.pki.certs import SigningIdentity, verify_signing_identity

__all__ = ["CertificateMismatchError", "PeerCertificates", "roster_digest"]

Fetch = Callable[[list[int]], Mapping[int, str]]  # client ids -> their signing certificates (PEM), from the aggregator
FetchRoster = Callable[[], Mapping[int, str]]  # the round's {client id: fingerprint} listing, from the aggregator


def _is_fingerprint(fp: object) -> bool:
    return isinstance(fp, str) and len(fp) == 64 and all(ch in "0123456789abcdef" for ch in fp)


class CertificateMismatchError(AuthenticationError):
    """A certificate fetched for a round does not have the fingerprint the round names for that client (or the
    aggregator did not return one that was asked for): the round is refused."""


class PeerCertificates:
    """Verified signing identities of peers, keyed by fingerprint; see the module invariants."""

    def __init__(self, ca: bytes, max_entries: int = 1 << 16) -> None:
        self.ca, self.max_entries = ca, int(max_entries)
        self._by_fp: dict[str, SigningIdentity] = {}
        self._fp_of: dict[int, str] = {}
        self.fetched = 0  # certificates fetched (and verified) since creation

    def __len__(self) -> int:
        return len(self._by_fp)

    def add(self, pem: bytes | str, identity: int) -> SigningIdentity:
        """Verify ``pem`` as ``identity``'s signing certificate (AuthenticationError else) and cache it."""
        ident = verify_signing_identity(self.ca, pem, identity)
        self._store(ident)
        return ident

    def _store(self, ident: SigningIdentity) -> None:
        old = self._fp_of.pop(ident.identity, None)
        if old is not None:
            self._by_fp.pop(old, None)
        while len(self._by_fp) >= self.max_entries:
            evicted = self._by_fp.pop(next(iter(self._by_fp)))
            self._fp_of.pop(evicted.identity, None)
        self._by_fp[ident.fingerprint] = ident
        self._fp_of[ident.identity] = ident.fingerprint

    def cached(self, identity: int, fp: str) -> Ed25519PublicKey | None:
        """The key cached under ``fp`` if it was verified for ``identity`` and is still valid, else None."""
        ident = self._by_fp.get(fp)
        if ident is None or ident.identity != identity or not ident.valid_now():
            return None
        return ident.key

    def resolve_roster(self, cohort: list[int], digest: str, fetch_roster: FetchRoster,
                       fetch: Fetch) -> dict[int, Ed25519PublicKey]:
        """The verified key of every client of ``cohort``, whose certificates the round names by ``digest``
        (:func:`roster_digest`): cached ones if they hash to it, else through the fetched listing (refused with
        CertificateMismatchError unless it covers exactly ``cohort`` and hashes to ``digest``)."""
        current = {c: self._fp_of.get(c) for c in cohort}
        if all(current.values()) and roster_digest(current) == digest:  # type: ignore[arg-type]
            keys = {c: self.cached(c, fp) for c, fp in current.items()}  # type: ignore[arg-type]
            if all(k is not None for k in keys.values()):
                return keys  # type: ignore[return-value]
        listing = fetch_roster()
        if sorted(listing) != sorted(cohort) or roster_digest(listing) != digest:
            raise CertificateMismatchError("the fingerprint listing does not match the round's roster digest")
        return self.resolve(listing, fetch)

    def resolve(self, wanted: Mapping[int, str], fetch: Fetch) -> dict[int, Ed25519PublicKey]:
        """The verified key of every client in ``wanted`` (``{id: fingerprint}``); certificates not cached under
        their fingerprint are fetched with ``fetch(ids)`` and verified first."""
        if not isinstance(wanted, Mapping) or not all(type(c) is int and c >= 0 and _is_fingerprint(fp)
                                                      for c, fp in wanted.items()):
            raise MalformedMessageError("the round's identities are not client ids with SHA-256 fingerprints")
        keys = {c: k for c, fp in wanted.items() if (k := self.cached(c, fp)) is not None}
        missing = sorted(set(wanted) - set(keys))
        if missing:
            got = fetch(missing)
            fresh = []
            for c in missing:
                if c not in got:
                    raise CertificateMismatchError(f"the aggregator returned no certificate for client {c}")
                ident = verify_signing_identity(self.ca, got[c], c)
                if ident.fingerprint != wanted[c]:
                    raise CertificateMismatchError(f"the certificate sent for client {c} has fingerprint "
                                                   f"{ident.fingerprint[:16]}…, the round names {wanted[c][:16]}…")
                fresh.append(ident)
            for ident in fresh:  # cached only once every fetched certificate matched
                self._store(ident)
                keys[ident.identity] = ident.key
            self.fetched += len(fresh)
        return keys
