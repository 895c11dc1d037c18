"""Pads that make an HE aggregate verifiable: what binds every named contribution into the key holder's result.

Each HE client adds a secret uniform polynomial ``P_i`` (its *pad*, from a fresh 32-byte seed) to ``c0`` of every
ciphertext it sends the aggregator, and sends the seed to the key holder only, sealed to the key holder's X25519
key (ephemeral X25519 + HKDF-SHA256 + AES-GCM) and, with identities, Ed25519-signed, so the message may travel
through the aggregator. The key holder subtracts ``Σ P_i`` over the contributors an aggregate names, then
decrypts. Because ``P_i`` is uniform in ``R_q`` and known only to client ``i`` and the key holder:

* any aggregate other than the exact sum of the named contributions (one left out, counted twice, scaled, taken
  from another round, a plaintext-multiplied slot mask, a ciphertext under another key) leaves a uniform residual
  in ``R_q``, so it decrypts to uniform noise in every slot; the key holder sees that in the guard slots (zeros
  every client encrypts) and refuses (``VerificationError``), releasing nothing;
* a colluding client cannot absorb an honest client's missing pad: it does not know it;
* pads stop *removal*, not *addition*: a term the aggregator adds itself carries no pad, so each client also
  seals the linear tags of its padded contribution under its seed (:mod:`secagg.he_tags`), which the key holder checks on the aggregate;
* a seed is used at most once: the key holder consumes a round's seeds when it decrypts (or refuses) that round;
* every seed names the digest of the round's public terms its client was told (:mod:`secagg.terms`); the key
  holder refuses an aggregate whose contributors were told different terms (a server that gave one client a
  smaller ``max_weight`` would scale that client's noise share down).

Wire: :class:`PadSeed` (tag 0x40): ``round_id, client_id, session_id, terms, ephemeral (X25519 public),
sealed (AES-GCM of the seed), signature (64 bytes, or empty without identities)``. Every key and the signature
bind the session id, the round, the client and the terms. The seed goes first, before the contribution streams;
the contribution's tags are known only after its last ciphertext, so they ride in its last part, sealed under a
key derived from the seed (:func:`seal_tags`): the aggregator relays them but can neither read nor make them.
"""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg.errors import AuthenticationError, MalformedMessageError
from secagg.hazmat import aead, kex, sign
from secagg.he_tags import MAX_TAG_WORDS
from secagg.messages import Message, message
from secagg.terms import NO_TERMS, TERMS_BYTES

__all__ = ["PadSeed", "SEED_BYTES", "seal_seed", "open_seed", "seal_tags", "open_tags", "pad_key", "fresh_seed"]

SEED_BYTES = 32
_SEAL_LABEL = b"secagg/he/pad-seal/v1"
_PAD_LABEL = b"secagg/he/pad/v1"
_SIGN_LABEL = b"secagg/he/pad-seed/v1"
_TAGS_LABEL = b"secagg/he/pad-tags/v1"


def _binding(session_id: bytes, round_id: int, client_id: int, terms: bytes) -> bytes:
    return session_id + struct.pack("<qq", round_id, client_id) + terms


@message(0x40)
class PadSeed(Message):
    """Client -> key holder (may be relayed): the client's pad seed for one round, sealed to the key holder."""

    round_id: int
    client_id: int
    session_id: bytes
    terms: bytes
    ephemeral: bytes
    sealed: bytes
    signature: bytes

    def validate(self) -> None:
        if self.round_id < 0 or self.client_id < 0:
            raise MalformedMessageError("round_id and client_id must be >= 0")
        if len(self.session_id) != 32 or len(self.ephemeral) != kex.KEY_BYTES or len(self.terms) != TERMS_BYTES:
            raise MalformedMessageError("session id, round terms digest and ephemeral key must be 32 bytes")
        if len(self.sealed) != SEED_BYTES + aead.OVERHEAD:
            raise MalformedMessageError(f"sealed seed must be {SEED_BYTES + aead.OVERHEAD} bytes")
        if len(self.signature) not in (0, sign.SIGNATURE_BYTES):
            raise MalformedMessageError("signature must be empty or 64 bytes")

    def signed_bytes(self) -> bytes:
        """What the client's identity signs: everything but the signature."""
        return (_SIGN_LABEL + _binding(self.session_id, self.round_id, self.client_id, self.terms) + self.ephemeral
                + self.sealed)


def seal_seed(seed: bytes, keyholder_key: bytes, *, session_id: bytes, round_id: int, client_id: int,
              identity: Ed25519PrivateKey | None, terms: bytes = NO_TERMS) -> PadSeed:
    """The :class:`PadSeed` carrying ``seed`` to the key holder whose X25519 public key is ``keyholder_key``; ``terms``: the digest of the round's public terms as this
    client was told them."""
    eph = kex.generate()
    eph_pk = kex.public_bytes(eph)
    info = _SEAL_LABEL + _binding(session_id, round_id, client_id, terms) + eph_pk
    key = kex.derive_key(kex.exchange(eph, keyholder_key), info=info, length=16)
    msg = PadSeed(round_id=round_id, client_id=client_id, session_id=session_id, terms=terms, ephemeral=eph_pk,
                  sealed=aead.encrypt(key, seed, info), signature=b"")
    if identity is None:
        return msg
    return PadSeed(round_id=round_id, client_id=client_id, session_id=session_id, terms=terms, ephemeral=eph_pk,
                   sealed=msg.sealed, signature=sign.sign(identity, msg.signed_bytes()))


def open_seed(msg: PadSeed, secret: X25519PrivateKey, identity: Ed25519PublicKey | None) -> bytes:
    """The seed inside ``msg``; with ``identity`` the signature must verify (``AuthenticationError``). A seed
    sealed to another key or for another session, round or client raises ``DecryptionError``."""
    if identity is not None:
        if not msg.signature:
            raise AuthenticationError(f"pad seed of client {msg.client_id} is unsigned")
        sign.verify(identity, msg.signature, msg.signed_bytes())
    info = _SEAL_LABEL + _binding(msg.session_id, msg.round_id, msg.client_id, msg.terms) + msg.ephemeral
    key = kex.derive_key(kex.exchange(secret, msg.ephemeral), info=info, length=16)
    return aead.decrypt(key, msg.sealed, info)


def pad_key(seed: bytes, *, session_id: bytes, round_id: int, client_id: int, terms: bytes = NO_TERMS) -> bytes:
    """The AES key of client ``client_id``'s pad in this round (:func:`secagg.hazmat.rlwe.apply_pad`)."""
    return kex.derive_key(seed, info=_PAD_LABEL + _binding(session_id, round_id, client_id, terms), length=16)


def seal_tags(seed: bytes, tags: bytes, *, session_id: bytes, round_id: int, client_id: int,
              terms: bytes = NO_TERMS) -> bytes:
    """The contribution's ``tags`` (:mod:`secagg.he_tags`) sealed for the key holder under a key only the seed's
    holders know: it may ride in the contribution's last part, since the aggregator can neither read nor forge it."""
    binding = _binding(session_id, round_id, client_id, terms)
    return aead.encrypt(kex.derive_key(seed, info=_TAGS_LABEL + binding, length=16), tags, binding)


def open_tags(seed: bytes, sealed: bytes, *, session_id: bytes, round_id: int, client_id: int,
              terms: bytes = NO_TERMS) -> bytes:
    """Inverse of :func:`seal_tags`: DecryptionError unless this client sealed ``sealed`` for this round and terms;
    MalformedMessageError if it is larger than ``MAX_TAG_WORDS`` tags could be."""
    if len(sealed) > 8 * MAX_TAG_WORDS + aead.OVERHEAD:
        raise MalformedMessageError(f"sealed tags of {len(sealed)} bytes exceed {MAX_TAG_WORDS} tags")
    binding = _binding(session_id, round_id, client_id, terms)
    return aead.decrypt(kex.derive_key(seed, info=_TAGS_LABEL + binding, length=16), sealed, binding)


def fresh_seed() -> bytes:
    """A new pad seed from the OS CSPRNG."""
    return os.urandom(SEED_BYTES)
