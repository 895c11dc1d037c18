"""Packed-BFV wire messages (tags 0x30..0x3F). Ciphertexts travel as ``tuple[bytes, ...]``, one TenSEAL BFVVector
per chunk of at most N slots. ``session_id`` is SHA-256(public context || packed parameters), so a ciphertext made
under another key or another lane layout is refused before it is ever added.

* :class:`PackedContribution`  client -> aggregator: the client's encrypted lanes of ``[w*x, w]``, whole or one
  part (ciphertexts ``first, ...``; the last part carries the sealed tags, :mod:`secagg.he_stream`).
* :class:`PackedAggregate`     aggregator -> key holder: the encrypted slot sums (or one part of them) and the
  clients in them.
* :class:`PackedResult`        key holder -> aggregator: the decrypted slot sums (integers mod t, as uint64).
"""

from __future__ import annotations

import numpy as np

from secagg.errors import MalformedMessageError
from secagg.messages import Message, message

__all__ = ["PackedContribution", "PackedAggregate", "PackedResult", "SESSION_ID_BYTES"]

SESSION_ID_BYTES = 32


def _check_common(round_id: int, dim: int) -> None:
    if round_id < 0:
        raise MalformedMessageError(f"round_id must be >= 0, got {round_id}")
    if dim < 1:
        raise MalformedMessageError(f"dim must be >= 1, got {dim}")


def _check_chunks(session_id: bytes, chunks: tuple[bytes, ...]) -> None:
    if len(session_id) != SESSION_ID_BYTES:
        raise MalformedMessageError(f"session_id must be {SESSION_ID_BYTES} bytes, got {len(session_id)}")
    if not chunks or any(len(c) == 0 for c in chunks):
        raise MalformedMessageError("a packed message needs at least one chunk and no empty chunk")


def _check_first(first: int) -> None:
    if first < 0:
        raise MalformedMessageError(f"first must be >= 0, got {first}")


def _check_contributors(ids: tuple[int, ...]) -> None:
    if not ids or ids[0] < 0 or any(a >= b for a, b in zip(ids, ids[1:])):
        raise MalformedMessageError("contributors must be non-empty, non-negative and strictly increasing")


@message(0x30)
class PackedContribution(Message):
    """One client's encrypted contribution: ``dim`` pre-weighted values plus the weight, packed into slots."""

    round_id: int
    client_id: int
    session_id: bytes
    dim: int
    first: int  # index of this part's first ciphertext in the contribution
    chunks: tuple[bytes, ...]
    sealed_tags: bytes  # the last part only: the client's tags sealed under its pad seed (secagg.he_pads.seal_tags)

    def validate(self) -> None:
        _check_common(self.round_id, self.dim)
        _check_first(self.first)
        if self.client_id < 0:
            raise MalformedMessageError(f"client_id must be >= 0, got {self.client_id}")
        _check_chunks(self.session_id, self.chunks)


@message(0x31)
class PackedAggregate(Message):
    """The encrypted slot sums over ``contributors`` (strictly increasing client ids)."""

    round_id: int
    session_id: bytes
    dim: int
    contributors: tuple[int, ...]
    first: int  # index of this part's first ciphertext in the aggregate
    chunks: tuple[bytes, ...]
    tags: tuple[bytes, ...]  # the last part only: each contributor's sealed tags, in ``contributors`` order

    def validate(self) -> None:
        _check_common(self.round_id, self.dim)
        _check_first(self.first)
        _check_chunks(self.session_id, self.chunks)
        _check_contributors(self.contributors)
        if self.tags and len(self.tags) != len(self.contributors):
            raise MalformedMessageError(f"{len(self.tags)} sealed tags for {len(self.contributors)} contributors")


@message(0x32)
class PackedResult(Message):
    """The decrypted slot sums of round ``round_id`` over ``contributors``, each in ``[0, t)``, as uint64."""

    round_id: int
    contributors: tuple[int, ...]
    slots: np.ndarray
    terms: bytes  # the round-terms digest every contributor's pad seed named (empty: none)
    signature: bytes  # the key holder's Ed25519 release signature (secagg.he_release)

    def validate(self) -> None:
        if len(self.signature) not in (0, 64) or len(self.terms) not in (0, 32):
            raise MalformedMessageError("signature must be empty or 64 bytes, terms empty or 32")
        _check_common(self.round_id, 1)
        _check_contributors(self.contributors)
        if self.slots.dtype != np.dtype("<u8") or self.slots.size == 0:
            raise MalformedMessageError("slots must be a non-empty uint64 vector")
