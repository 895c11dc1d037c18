"""Masking wire messages (tags 0x20..0x28), one pair per stage; every message carries ``round_id``.

Client -> server: :class:`AdvertiseKeys`, :class:`ShareKeys`, :class:`MaskedInput`, :class:`ConsistencyResponse`,
:class:`UnmaskResponse`. Server -> client: :class:`KeyRoster`, :class:`ShareDelivery`, :class:`ConsistencyRequest`,
:class:`UnmaskRequest`. ``validate()`` checks everything that can be checked without round state: sizes of keys,
signatures, commitments and revealed shares, strictly increasing id lists, non-empty ciphertexts, an unsigned ring
vector, and that an unmask request's alive and dropped sets are disjoint.

What is signed binds the round's ``session_id`` (:attr:`MaskingConfig.session_id`: nonce, cohort, every public
parameter), never the round id alone. Commitments (:func:`share_commitment`, :func:`seed_commitment`) let the
server check every share a holder reveals against what its dealer dealt.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from secagg.errors import MalformedMessageError
from secagg.hazmat.aead import OVERHEAD
from secagg.hazmat.kex import KEY_BYTES
from secagg.hazmat.sign import SIGNATURE_BYTES
from secagg.messages import Message, message

__all__ = ["AdvertiseKeys", "KeyRoster", "ShareKeys", "ShareDelivery", "MaskedInput", "ConsistencyRequest",
           "ConsistencyResponse", "UnmaskRequest", "UnmaskResponse", "advertise_payload", "survivors_payload",
           "share_commitment", "seed_commitment", "B_SHARE_BYTES", "S_SHARE_BYTES", "OPENING_BYTES",
           "COMMITMENT_BYTES"]

B_SHARE_BYTES = 6 + 4 * 8  # a Shamir share of the 16-byte self-mask seed (8 limbs)
S_SHARE_BYTES = 6 + 4 * 16  # a Shamir share of the 32-byte X25519 mask key (16 limbs)
OPENING_BYTES = 16  # the random nonce that opens a share commitment
COMMITMENT_BYTES = 32


def advertise_payload(session_id: bytes, client_id: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """The bytes a client's identity key signs for its key advertisement."""
    return b"secagg/masking/advertise/v2" + session_id + struct.pack("<q", client_id) + c_pk + s_pk


def survivors_payload(session_id: bytes, survivors: tuple[int, ...]) -> bytes:
    """The bytes a client signs in the consistency check: the session and the ids whose inputs are in the sum."""
    return b"secagg/masking/survivors/v2" + session_id + struct.pack(f"<{len(survivors)}q", *survivors)


def share_commitment(kind: bytes, session_id: bytes, owner: int, holder: int, share: bytes, nonce: bytes) -> bytes:
    """SHA-256 commitment of ``owner``'s ``kind`` (b"b" self-mask, b"s" mask key) share held by ``holder``."""
    return hashlib.sha256(b"secagg/masking/share-commit/v1" + kind + session_id + struct.pack("<qq", owner, holder)
                          + share + nonce).digest()


def seed_commitment(session_id: bytes, owner: int, seed: bytes) -> bytes:
    """SHA-256 commitment of ``owner``'s self-mask seed (128 uniform bits: hiding without a nonce)."""
    return hashlib.sha256(b"secagg/masking/seed-commit/v1" + session_id + struct.pack("<q", owner) + seed).digest()


def _round(round_id: int) -> None:
    if round_id < 0:
        raise MalformedMessageError(f"round_id must be >= 0, got {round_id}")


def _client(client_id: int, what: str = "client_id") -> None:
    if client_id < 0:
        raise MalformedMessageError(f"{what} must be >= 0, got {client_id}")


def _ids(ids: tuple[int, ...], what: str, *, nonempty: bool = True) -> None:
    if (nonempty and not ids) or (ids and ids[0] < 0) or any(a >= b for a, b in zip(ids, ids[1:])):
        raise MalformedMessageError(f"{what} must be {'non-empty, ' if nonempty else ''}non-negative and "
                                    "strictly increasing")


def _signature(sig: bytes) -> None:
    if len(sig) not in (0, SIGNATURE_BYTES):
        raise MalformedMessageError(f"a signature is empty (unsigned) or {SIGNATURE_BYTES} bytes, got {len(sig)}")


def _keys(*keys: bytes) -> None:
    if any(len(k) != KEY_BYTES for k in keys):
        raise MalformedMessageError(f"X25519 public keys must be {KEY_BYTES} bytes")


def _map(m: dict[int, bytes], what: str, min_len: int = 1) -> None:
    _ids(tuple(sorted(m)), what, nonempty=False)  # the wire sorts keys; insertion order is irrelevant
    if any(len(v) < min_len for v in m.values()):
        raise MalformedMessageError(f"every entry of {what} needs at least {min_len} bytes")


@message(0x20)
class AdvertiseKeys(Message):
    """Stage 1, client -> server: the client's X25519 channel key and mask key, optionally Ed25519-signed."""

    round_id: int
    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def validate(self) -> None:
        _round(self.round_id)
        _client(self.client_id)
        _keys(self.c_pk, self.s_pk)
        if self.c_pk == self.s_pk:
            raise MalformedMessageError("the channel key and the mask key must differ")
        _signature(self.signature)


@message(0x21)
class KeyRoster(Message):
    """Stage 1, server -> client: the advertisements of the recipient's neighbours (parallel tuples)."""

    round_id: int
    client_ids: tuple[int, ...]
    c_pks: tuple[bytes, ...]
    s_pks: tuple[bytes, ...]
    signatures: tuple[bytes, ...]

    def validate(self) -> None:
        _round(self.round_id)
        _ids(self.client_ids, "client_ids")
        if not len(self.client_ids) == len(self.c_pks) == len(self.s_pks) == len(self.signatures):
            raise MalformedMessageError("roster tuples must have equal lengths")
        _keys(*self.c_pks, *self.s_pks)
        for c, s, sig in zip(self.c_pks, self.s_pks, self.signatures):
            if c == s:
                raise MalformedMessageError("the channel key and the mask key must differ")
            _signature(sig)


@message(0x22)
class ShareKeys(Message):
    """Stage 2, client -> server: AES-GCM-encrypted Shamir shares, one ciphertext per neighbour (recipient id),
    the commitments to every holder's two shares (``commitments[h]`` = b-share commitment | s-share commitment,
    the sender's own share included) and the commitment to the sender's self-mask seed."""

    round_id: int
    client_id: int
    ciphertexts: dict[int, bytes]
    commitments: dict[int, bytes]
    seed_commitment: bytes

    def validate(self) -> None:
        _round(self.round_id)
        _client(self.client_id)
        _map(self.ciphertexts, "ciphertexts", OVERHEAD + 1)
        if not self.ciphertexts or self.client_id in self.ciphertexts:
            raise MalformedMessageError("shares go to at least one neighbour and never to the sender itself")
        if set(self.commitments) != set(self.ciphertexts) | {self.client_id}:
            raise MalformedMessageError("commitments must cover exactly the share holders (the sender included)")
        if any(len(c) != 2 * COMMITMENT_BYTES for c in self.commitments.values()) or \
                len(self.seed_commitment) != COMMITMENT_BYTES:
            raise MalformedMessageError(f"commitments are {COMMITMENT_BYTES}-byte SHA-256 digests")


@message(0x23)
class ShareDelivery(Message):
    """Stage 2, server -> client: the ciphertexts addressed to ``recipient``, keyed by sender id."""

    round_id: int
    recipient: int
    ciphertexts: dict[int, bytes]

    def validate(self) -> None:
        _round(self.round_id)
        _client(self.recipient, "recipient")
        _map(self.ciphertexts, "ciphertexts", OVERHEAD + 1)
        if not self.ciphertexts or self.recipient in self.ciphertexts:
            raise MalformedMessageError("a delivery holds at least one neighbour's shares and none from itself")


@message(0x24)
class MaskedInput(Message):
    """Stage 3, client -> server: ``[enc(w*x), enc(w)] + masks`` in the ring, packed in the ring dtype; whole
    (``first = 0``) or one part of it, values ``first, first + 1, ...`` (streamed: parts in order)."""

    round_id: int
    client_id: int
    first: int
    masked: np.ndarray

    def validate(self) -> None:
        _round(self.round_id)
        _client(self.client_id)
        if self.first < 0:
            raise MalformedMessageError(f"first must be >= 0, got {self.first}")
        if self.masked.dtype.kind != "u" or self.masked.size < 1:
            raise MalformedMessageError("masked input must be a non-empty unsigned ring vector")


@message(0x25)
class ConsistencyRequest(Message):
    """Stage 4, server -> client: the ids whose masked inputs are in the sum (U3)."""

    round_id: int
    survivors: tuple[int, ...]

    def validate(self) -> None:
        _round(self.round_id)
        _ids(self.survivors, "survivors")


@message(0x26)
class ConsistencyResponse(Message):
    """Stage 4, client -> server: the client's signature of the survivor list (empty without identities)."""

    round_id: int
    client_id: int
    signature: bytes

    def validate(self) -> None:
        _round(self.round_id)
        _client(self.client_id)
        _signature(self.signature)


@message(0x27)
class UnmaskRequest(Message):
    """Stage 5, server -> client: reveal self-mask shares of ``alive``, mask-key shares of ``dropped``.

    ``signatures`` are the consistency-check signatures of ``alive`` (signer id -> signature)."""

    round_id: int
    alive: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: dict[int, bytes]

    def validate(self) -> None:
        _round(self.round_id)
        _ids(self.alive, "alive")
        _ids(self.dropped, "dropped", nonempty=False)
        if set(self.alive) & set(self.dropped):
            raise MalformedMessageError("alive and dropped sets intersect: revealing both shares would unmask a client")
        _map(self.signatures, "signatures", SIGNATURE_BYTES)
        if any(len(s) != SIGNATURE_BYTES for s in self.signatures.values()):
            raise MalformedMessageError(f"signatures must be {SIGNATURE_BYTES} bytes")


@message(0x28)
class UnmaskResponse(Message):
    """Stage 5, client -> server: serialized Shamir shares with their commitment openings (``share | nonce``),
    keyed by the owner of the secret."""

    round_id: int
    client_id: int
    b_shares: dict[int, bytes]
    s_shares: dict[int, bytes]

    def validate(self) -> None:
        _round(self.round_id)
        _client(self.client_id)
        _map(self.b_shares, "b_shares")
        _map(self.s_shares, "s_shares")
        if set(self.b_shares) & set(self.s_shares):
            raise MalformedMessageError("a response never holds both shares of one client")
        if any(len(v) != B_SHARE_BYTES + OPENING_BYTES for v in self.b_shares.values()) or \
                any(len(v) != S_SHARE_BYTES + OPENING_BYTES for v in self.s_shares.values()):
            raise MalformedMessageError("a revealed share has the wrong size")
