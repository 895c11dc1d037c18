"""What an in-process federation needs of one secure-aggregation scheme: the scheme, its key holder, identities.

:class:`SecureSum` is the in-process stand-in for the deployment around the engine: it holds the scheme's round
construction (:mod:`training.engine.roles`, the one factory), the key holder (CKKS, packed: ONE for the
federation's life, with its public context, parsed once), each client's Ed25519 signing identity for signed
masking rounds, and the masking sessions each client already took part in (a reused one is refused). The rounds
themselves are run by :class:`training.inprocess.federation.Federation` through the engine.

Every scheme runs its hardened protocol (docs/threat-model.md): masking rounds are signed, with a fresh nonce
per round; HE clients pad their ciphertexts and seal their pad seeds to the key holder, which releases only
verified sums. ``sign=False`` opts masking out of signatures, for a trusted server only. Every client pre-weights
``[w·x, w]`` inside its own encryption or masking, so the aggregator never applies (or sees) a weight.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.hazmat import sign as ed25519
from training.engine.roles import SCHEMES, Scheme, make_keyholder, make_scheme
from training.errors import ConfigError

__all__ = ["SecureSum", "SCHEMES"]


@dataclass(frozen=True)
class LocalIdentity:
    """An in-process client's signing identity, named by the SHA-256 of its raw public key."""

    key: Ed25519PublicKey
    fingerprint: str

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> LocalIdentity:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(key, hashlib.sha256(raw).hexdigest())


class SecureSum:
    """One scheme for one federation. Options — ckks: ``params`` ("default" | "add-only"), ``min_contributors``;
    masking: ``clip`` (L∞ bound of every value), ``ring_bits``, ``threshold``, ``neighbors``, ``max_corrupt``,
    ``share_dropouts``, ``rounding``, ``sign``; packed: ``clip``, ``rounding``, ``min_contributors`` and
    ``max_cohort`` (required: the largest cohort, which fixes the lane layout)."""

    def __init__(self, scheme: str = "ckks", *, params: str = "default", min_contributors: int = 2,
                 clip: float = 1.0, ring_bits: int = 32, threshold: int | None = None,
                 neighbors: int | None = None, rounding: str = "stochastic", max_cohort: int | None = None,
                 max_corrupt: int | None = None, share_dropouts: int | None = None, sign: bool = True) -> None:
        if scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
        if scheme == "packed" and max_cohort is None:
            raise ConfigError("the packed scheme needs max_cohort (the largest cohort: it fixes the lane layout)")
        self.scheme = scheme
        options: dict = {
            "ckks": {"params": params, "min_contributors": int(min_contributors)},
            "packed": {"max_cohort": None if max_cohort is None else max(2, int(max_cohort)), "clip": float(clip),
                       "rounding": rounding, "min_contributors": int(min_contributors), "min_value_bits": 14},
            "masking": {"clip": float(clip), "ring_bits": int(ring_bits), "threshold": threshold,
                        "neighbors": neighbors, "rounding": rounding, "max_corrupt": max_corrupt,
                        "share_dropouts": share_dropouts, "signed": bool(sign)},
        }[scheme]
        self.roles: Scheme = make_scheme(scheme, options)
        self.keyholder = None
        self.context: bytes | None = None
        self.public: object = None
        if self.roles.needs_keyholder:
            self.keyholder = make_keyholder(scheme, options)
            self.context = self.keyholder.public_context()
            self.public = self._parse(self.context)
        self._keys: dict[int, Ed25519PrivateKey] = {}
        self._identities: dict[int, LocalIdentity] = {}
        self._tag_keys: dict[int, bytes] = {}
        self.sessions: dict[int, set[bytes]] = defaultdict(set)  # client -> masking sessions it took part in
        self.next_round_id = 1  # round ids of this key holder's life (it finalizes each once, in order)
        self.last_roles: tuple | None = None  # (clients, aggregator, key holder) of the latest round, for audits

    def _parse(self, context: bytes) -> object:
        if self.scheme == "ckks":
            from secagg.ckks.params import load_public_context

            return load_public_context(context, need_public_key=True)
        from secagg.packed import PackedParams
        from secagg.packed.params import load_public_context as load_packed

        o = self.roles.options
        return load_packed(context, PackedParams(max_cohort=o["max_cohort"], min_value_bits=o["min_value_bits"]),
                           need_public_key=True)

    @property
    def setup_bytes(self) -> int:
        """Bytes each client downloads once when joining (the HE public context; 0 for masking)."""
        return len(self.context) if self.context is not None else 0

    @property
    def signed(self) -> bool:
        return self.roles.needs_identities

    def signer(self, cid: int) -> Ed25519PrivateKey | None:
        """Client ``cid``'s signing key (made on first use, kept for the federation's life); None if unsigned."""
        if not self.signed:
            return None
        if cid not in self._keys:
            self._keys[cid] = ed25519.generate()
        return self._keys[cid]

    def tag_key(self, cid: int) -> bytes | None:
        """Client ``cid``'s tag key, granted by the key holder over the direct in-process channel (None for
        masking); asked once per client, kept in the client's place only."""
        if self.keyholder is None:
            return None
        if cid not in self._tag_keys:
            from secagg.he_keyholder import granted_tag_key

            self._tag_keys[cid] = granted_tag_key(self.keyholder, cid)
        return self._tag_keys[cid]

    def identity(self, cid: int) -> LocalIdentity | None:
        if cid not in self._identities:
            key = self.signer(cid)
            if key is None:
                return None
            self._identities[cid] = LocalIdentity.of(key.public_key())  # derived once per client, not per round
        return self._identities[cid]
