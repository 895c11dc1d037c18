"""X25519 key agreement and HKDF-SHA256 key derivation.

Invariants: every derived key binds its purpose through ``info`` (a domain label, the round's 32-byte session id
and the *ordered* pair ``(min(u, v), max(u, v))``), so both ends of a pair derive the same key and no key is ever
reused across rounds, cohorts, pairs or purposes. A peer key whose shared secret is all zero (a low-order point)
raises.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from secagg.errors import MalformedMessageError

__all__ = ["KEY_BYTES", "generate", "check_public", "public_bytes", "private_bytes", "load_private", "exchange", "derive_key",
           "pair_info", "mask_seed", "channel_key"]

KEY_BYTES = 32
MASK_LABEL = b"secagg/masking/pair-mask/v2"
CHANNEL_LABEL = b"secagg/masking/share-channel/v2"


def generate() -> X25519PrivateKey:
    """A fresh X25519 private key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def public_bytes(sk: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``sk``."""
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key (what a client Shamir-shares as its mask secret)."""
    return sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def load_private(raw: bytes) -> X25519PrivateKey:
    """Inverse of :func:`private_bytes`; raises MalformedMessageError on a wrong size."""
    if len(raw) != KEY_BYTES:
        raise MalformedMessageError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def exchange(sk: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519(sk, peer_public); raises MalformedMessageError for a malformed or low-order peer key."""
    if len(peer_public) != KEY_BYTES:
        raise MalformedMessageError(f"X25519 public key must be {KEY_BYTES} bytes, got {len(peer_public)}")
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError as exc:  # all-zero shared secret
        raise MalformedMessageError(f"unusable X25519 peer key: {exc}") from exc


_PROBE = X25519PrivateKey.generate()  # a throwaway key: exchanging with it tests a peer key's order


def check_public(peer_public: bytes) -> None:
    """Raise MalformedMessageError unless ``peer_public`` is a 32-byte X25519 key of large order (a low-order
    point makes every shared secret all-zero, whatever the private key)."""
    exchange(_PROBE, peer_public)


def derive_key(shared: bytes, *, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``shared`` into ``length`` bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(shared)


def pair_info(label: bytes, session: bytes, u: int, v: int) -> bytes:
    """``label | session | min(u,v) | max(u,v)``: the same for both ends, distinct for every round and pair."""
    if u == v:
        raise ValueError("a pair needs two distinct clients")
    if len(session) != 32:
        raise ValueError("session must be a 32-byte session id")
    return label + session + struct.pack("<qq", min(u, v), max(u, v))


def mask_seed(sk: X25519PrivateKey, peer_public: bytes, *, session: bytes, u: int, v: int) -> bytes:
    """The 16-byte (AES-128, full 128-bit) pairwise mask seed s_uv = HKDF(X25519(s_sk_u, s_pk_v))."""
    return derive_key(exchange(sk, peer_public), info=pair_info(MASK_LABEL, session, u, v), length=16)


def channel_key(sk: X25519PrivateKey, peer_public: bytes, *, session: bytes, u: int, v: int) -> bytes:
    """The 16-byte AES-GCM key of the share channel between ``u`` and ``v`` in the round ``session``."""
    return derive_key(exchange(sk, peer_public), info=pair_info(CHANNEL_LABEL, session, u, v), length=16)
