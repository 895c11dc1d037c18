"""Signed releases: the key holder's Ed25519 signature on every sum it releases, checkable by every client.

The key holder makes a fresh Ed25519 *release key* with its session and publishes the public half in the public
bundle (:func:`secagg.he_round.bundle`), which clients take over an authenticated channel (mTLS from the key holder,
or signed by the trusted key holder in the Flower driver). Every result message it sends (``CKKSResult``,
``PackedResult``) carries ``signature`` over ``label | session id | the result encoded with an empty signature``:
round id, contributor ids and every released value. The aggregator forwards the signed result; a client checks it
with :func:`verify_release` against the bundle it trusts, so a sum from another round, another cohort, another key
holder, or one the aggregator altered or re-signed, is refused (``AuthenticationError``).

Invariant: the signature covers exactly the bytes a client decodes (nothing outside it is read).
"""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secagg.errors import AuthenticationError, MalformedMessageError
from secagg.hazmat import sign
from secagg.messages import Message, decode

__all__ = ["sign_release", "verify_release", "RELEASE_KEY_BYTES"]

RELEASE_KEY_BYTES = 32
_LABEL = b"secagg/he/release/v1"


def _signed_bytes(session_id: bytes, result: Message) -> bytes:
    return _LABEL + session_id + dataclasses.replace(result, signature=b"").to_bytes()  # type: ignore[type-var]


def sign_release(key: Ed25519PrivateKey, session_id: bytes, result: Message) -> Message:
    """``result`` with the key holder's signature filled in."""
    return dataclasses.replace(result, signature=sign.sign(key, _signed_bytes(session_id, result)))  # type: ignore


def verify_release(public_bundle: bytes, payload: bytes, *, round_id: int | None = None) -> Message:
    """The result message in ``payload`` if the key holder of ``public_bundle`` signed it (and it answers
    ``round_id``, when given); anything else raises ``AuthenticationError`` or ``MalformedMessageError``."""
    import secagg.ckks.messages  # noqa: F401  (register the result types: a fresh process, e.g. a Flower
    import secagg.packed.messages  # noqa: F401  ClientApp, may verify before it ever ran a round)
    from secagg.he_round import release_key

    result = decode(payload)
    if not hasattr(result, "signature") or not hasattr(result, "contributors"):
        raise MalformedMessageError(f"{type(result).__name__} is not a key-holder release")
    if len(result.signature) != sign.SIGNATURE_BYTES:
        raise AuthenticationError("the release is not signed")
    session = hashlib.sha256(public_bundle).digest()
    key = Ed25519PublicKey.from_public_bytes(release_key(public_bundle))
    sign.verify(key, result.signature, _signed_bytes(session, result))
    if round_id is not None and result.round_id != round_id:
        raise AuthenticationError(f"the release is of round {result.round_id}, not {round_id}")
    return result
