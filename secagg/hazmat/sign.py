"""Ed25519 signatures. ``verify`` raises ``AuthenticationError``; it never returns a bool."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.errors import AuthenticationError

__all__ = ["SIGNATURE_BYTES", "generate", "sign", "verify"]

SIGNATURE_BYTES = 64


def generate() -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key from the OS CSPRNG."""
    return Ed25519PrivateKey.generate()


def sign(sk: Ed25519PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data``."""
    return sk.sign(data)


def verify(pk: Ed25519PublicKey, signature: bytes, data: bytes) -> None:
    """Raise AuthenticationError unless ``signature`` is ``pk``'s valid signature of ``data``."""
    if len(signature) != SIGNATURE_BYTES:
        raise AuthenticationError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    try:
        pk.verify(bytes(signature), data)
    except InvalidSignature as exc:
        raise AuthenticationError("Ed25519 signature does not verify") from exc
