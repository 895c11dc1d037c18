"""AES-GCM authenticated encryption with associated data.

Wire form: ``nonce (12 bytes, OS-random) | ciphertext | tag (16 bytes)``. Decryption failure of any kind (wrong
key, wrong associated data, truncated or modified bytes) raises ``DecryptionError``; nothing returns a bool.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import DecryptionError

__all__ = ["NONCE_BYTES", "TAG_BYTES", "OVERHEAD", "encrypt", "decrypt"]

NONCE_BYTES, TAG_BYTES = 12, 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``associated_data`` (16-, 24- or 32-byte ``key``)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, data: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises DecryptionError unless ``data`` is authentic under key and AD."""
    if len(data) < OVERHEAD:
        raise DecryptionError(f"ciphertext of {len(data)} bytes is shorter than nonce + tag ({OVERHEAD})")
    try:
        return AESGCM(key).decrypt(bytes(data[:NONCE_BYTES]), bytes(data[NONCE_BYTES:]), associated_data)
    except InvalidTag as exc:
        raise DecryptionError("AES-GCM authentication failed (wrong key, associated data or ciphertext)") from exc
