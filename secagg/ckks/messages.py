"""CKKS wire messages (tags 0x10..0x1F). Ciphertexts travel as ``tuple[bytes, ...]``, one padded ciphertext per
chunk in the raw form of :mod:`secagg.hazmat.rlwe` (see :mod:`secagg.ckks.params` for the layout).
``context_id`` is the SHA-256 of the key holder's public bundle, so a ciphertext for another key holder's key is
refused before it is ever added. The client's pad seed travels separately (:class:`secagg.he_pads.PadSeed`).

* :class:`CKKSContribution`  client -> aggregator: the client's padded encryption of ``[w*x, w, guards]``, whole
  or one part of it (ciphertexts ``first, first + 1, ...``; the last part carries the sealed tags).
* :class:`CKKSAggregate`     aggregator -> key holder: the padded sum (or one part of it, the last with every
  contributor's sealed tags) and the ids of the clients in it.
* :class:`CKKSResult`        key holder -> aggregator: the verified decrypted sum ``[Σ w*x, Σ w]``.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import MalformedMessageError
from secagg.messages import Message, message

__all__ = ["CKKSContribution", "CKKSAggregate", "CKKSResult", "CONTEXT_ID_BYTES"]

CONTEXT_ID_BYTES = 32


def _check_common(round_id: int, dim: int) -> None:
    if round_id < 0:
        raise MalformedMessageError(f"round_id must be >= 0, got {round_id}")
    if dim < 1:
        raise MalformedMessageError(f"dim must be >= 1, got {dim}")


def _check_chunks(context_id: bytes, chunks: tuple[bytes, ...]) -> None:
    if len(context_id) != CONTEXT_ID_BYTES:
        raise MalformedMessageError(f"context_id must be {CONTEXT_ID_BYTES} bytes, got {len(context_id)}")
    if not chunks or any(len(c) == 0 for c in chunks):
        raise MalformedMessageError("a CKKS message needs at least one chunk and no empty chunk")


def _check_first(first: int) -> None:
    if first < 0:
        raise MalformedMessageError(f"first must be >= 0, got {first}")


def _check_contributors(ids: tuple[int, ...]) -> None:
    if not ids or ids[0] < 0 or any(a >= b for a, b in zip(ids, ids[1:])):
        raise MalformedMessageError("contributors must be non-empty, non-negative and strictly increasing")


@message(0x10)
class CKKSContribution(Message):
    """One client's padded, encrypted ``[w*x, w, guards]`` for an update of ``dim`` values."""

    round_id: int
    client_id: int
    context_id: bytes
    dim: int
    first: int  # index of this part's first ciphertext in the contribution
    chunks: tuple[bytes, ...]
    sealed_tags: bytes  # the last part only: the client's tags sealed under its pad seed (secagg.he_pads.seal_tags)

    def validate(self) -> None:
        _check_common(self.round_id, self.dim)
        _check_first(self.first)
        if self.client_id < 0:
            raise MalformedMessageError(f"client_id must be >= 0, got {self.client_id}")
        _check_chunks(self.context_id, self.chunks)


@message(0x11)
class CKKSAggregate(Message):
    """The padded encrypted sum over ``contributors`` (strictly increasing client ids)."""

    round_id: int
    context_id: bytes
    dim: int
    contributors: tuple[int, ...]
    first: int  # index of this part's first ciphertext in the aggregate
    chunks: tuple[bytes, ...]
    tags: tuple[bytes, ...]  # the last part only: each contributor's sealed tags, in ``contributors`` order

    def validate(self) -> None:
        _check_common(self.round_id, self.dim)
        _check_first(self.first)
        _check_chunks(self.context_id, self.chunks)
        _check_contributors(self.contributors)
        if self.tags and len(self.tags) != len(self.contributors):
            raise MalformedMessageError(f"{len(self.tags)} sealed tags for {len(self.contributors)} contributors")


@message(0x12)
class CKKSResult(Message):
    """The decrypted sum of the aggregate of round ``round_id`` over ``contributors``: float64 ``values``."""

    round_id: int
    contributors: tuple[int, ...]
    values: np.ndarray
    terms: bytes  # the round-terms digest every contributor's pad seed named (empty: none)
    signature: bytes  # the key holder's Ed25519 release signature (secagg.he_release)

    def validate(self) -> None:
        if len(self.signature) not in (0, 64) or len(self.terms) not in (0, 32):
            raise MalformedMessageError("signature must be empty or 64 bytes, terms empty or 32")
        _check_common(self.round_id, 1)
        _check_contributors(self.contributors)
        if self.values.dtype != np.dtype("<f8") or self.values.size == 0:
            raise MalformedMessageError("values must be a non-empty float64 vector")
        if not np.isfinite(self.values).all():
            raise MalformedMessageError("values hold NaN/Inf")
