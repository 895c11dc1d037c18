"""A client's cache of verified peer signing certificates, so signed rounds name certificates by fingerprint.

A signed masking task lists the cohort as ``{client id: SHA-256 fingerprint}`` instead of whole certificates.
:meth:`PeerCertificates.resolve` turns that list into the Ed25519 keys the client's role verifies signatures with.
Invariants:

* a key is used only if its certificate was verified against this client's own CA copy for exactly that client id
  (:func:`~.certs.verify_signing_identity`), is still within its validity, and has exactly the fingerprint the
  round names; the aggregator only ever chooses *which* CA-issued certificate a round uses, never a key;
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
from training.transport.certs import SigningIdentity, verify_signing_identity

__all__ = ["CertificateMismatchError", "PeerCertificates"]

Fetch = Callable[[list[int]], Mapping[int, str]]  # client ids -> their signing certificates (PEM), from the aggregator


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

    def resolve(self, listed: Mapping[str, str], fetch: Fetch) -> dict[int, Ed25519PublicKey]:
        """The verified key of every client in ``listed`` (``{str(id): fingerprint}``, a round's parameters);
        certificates not cached under their fingerprint are fetched with ``fetch(ids)`` and verified first."""
        if not isinstance(listed, Mapping):
            raise MalformedMessageError("the round's identities are not a mapping of client ids to fingerprints")
        wanted: dict[int, str] = {}
        for key, fp in listed.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(fp, str) and len(fp) == 64):
                raise MalformedMessageError("the round's identities are not client ids with SHA-256 fingerprints")
            wanted[int(key)] = fp
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
