"""A client's streamed contribution on its own disk, between the Flower messages that carry it part by part.

Flower answers one message with one reply, and a deployed SuperNode starts a fresh process per message, so a
contribution made as a stream (:meth:`secagg.he_round.HEClient.stream`, a masking client's streamed delivery
answer) cannot stay a live iterator between the ServerApp's ``part`` requests. The parts after the first are
written, as they are made, to one file of the client's own (mode 0600); the sealed node state keeps only a
:class:`Spool` record (path, offsets, SHA-256 of every part), so a later process serves part ``i`` by reading it
back. Nothing secret is on disk: a part is what the client sends the aggregator anyway (padded ciphertexts or
masked values).

A masking client also waits between messages with its update (its role masks it only when the shares arrive):
:class:`UpdateFile` keeps that update on the same disk, encrypted, so the sealed state holds a key and a path, not
8 bytes per value.

Invariants: a part is served only as written (its digest is checked; a changed, truncated or missing file is a
:class:`~secagg.snapshot.SnapshotError`); parts are served in order (a request repeated after a lost reply gets the
same bytes again; any other index is a ``StageError``); the file is removed when the round ends for this client
(the ServerApp's ``end``, or the next task: :meth:`Spool.remove`). Memory: one part at a time. An update file is
read only as written (AES-GCM per block under a fresh key that exists only in the sealed node state, the block's
index and the file's length bound in: a changed, swapped, truncated or missing block is a ``SnapshotError``) and
is removed with the role (round done, ``end``, or the next task). Written by hand: a file of parts with digests,
and one of AES-GCM blocks, is all it needs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import StageError
from secagg.snapshot import SnapshotError

__all__ = ["Spool", "UpdateFile", "spool_dir"]

UPDATE_LABEL = b"secagg/flower/update-file/v1"
BLOCK_VALUES = 1 << 20  # float64 values per encrypted block (8 MiB): what one read decrypts at most per block
TAG_BYTES = 16


def spool_dir(configured: str | None) -> Path:
    """Where a node spools parts: ``configured`` (the run's ``spool`` setting) or the system's temp directory."""
    return Path(configured) if configured else Path(tempfile.gettempdir())


@dataclass
class Spool:
    """Parts ``1 .. total - 1`` of one round's contribution (part 0 travelled in the reply that made them)."""

    path: str
    round_id: int
    offsets: list[int] = field(default_factory=lambda: [0])
    digests: list[bytes] = field(default_factory=list)
    served: int = 0  # parts served so far (the next request must name part served + 1, or repeat part served)

    @classmethod
    def write(cls, directory: Path, tag: str, round_id: int, parts: Iterator[bytes]) -> Spool | None:
        """Write ``parts`` (consumed one at a time) to a fresh file under ``directory``; None when there are none."""
        first = next(parts, None)
        if first is None:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"secagg-{tag}-r{round_id}-", suffix=".parts", dir=directory)
        spool = cls(path, round_id)
        try:
            with os.fdopen(fd, "wb") as f:  # mkstemp: mode 0600, this user's only
                for part in _chain(first, parts):
                    f.write(part)
                    spool.offsets.append(spool.offsets[-1] + len(part))
                    spool.digests.append(hashlib.sha256(part).digest())
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return spool

    @property
    def total(self) -> int:
        """Parts of the contribution, counting part 0."""
        return 1 + len(self.digests)

    def read(self, index: int) -> bytes:
        """Part ``index`` (1-based past the reply's part 0), checked against its digest."""
        if not (self.served <= index <= self.served + 1) or not 1 <= index < self.total:
            raise StageError(f"part {index} asked; part {self.served + 1} of {self.total - 1} spooled is next")
        a, b = self.offsets[index - 1], self.offsets[index]
        try:
            with open(self.path, "rb") as f:
                f.seek(a)
                part = f.read(b - a)
        except OSError as exc:
            raise SnapshotError(f"the spooled parts are gone: {exc}") from exc
        if len(part) != b - a or hashlib.sha256(part).digest() != self.digests[index - 1]:
            raise SnapshotError(f"spooled part {index} is not what this client wrote")
        self.served = index
        return part

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


@dataclass
class UpdateFile:
    """A float64 update of ``dim`` values on this client's disk, encrypted block by block; sliced like an array
    (``x[a:b]``, :func:`secagg.encoding.update_length`), reading and decrypting only the blocks it covers.
    Pickled (into the sealed node state) it is the path and the key, never the values."""

    path: str
    dim: int
    key: bytes
    block: int = BLOCK_VALUES

    @classmethod
    def write(cls, directory: Path, tag: str, vector: np.ndarray, block: int = BLOCK_VALUES) -> UpdateFile:
        """Encrypt ``vector`` (1-D float64, non-empty) to a fresh file under ``directory`` (mode 0600), ``block``
        values per AES-GCM block."""
        if not (isinstance(vector, np.ndarray) and vector.ndim == 1 and vector.size and vector.dtype == np.float64):
            raise ValueError("an update file holds a non-empty 1-D float64 vector")
        if not 1 <= block <= BLOCK_VALUES:
            raise ValueError(f"block must be 1..{BLOCK_VALUES} values")
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"secagg-{tag}-", suffix=".update", dir=directory)
        out = cls(path, int(vector.size), AESGCM.generate_key(bit_length=256), block)
        aead = AESGCM(out.key)
        try:
            with os.fdopen(fd, "wb") as f:
                for i, a in enumerate(range(0, out.dim, block)):
                    block_values = np.ascontiguousarray(vector[a:a + block], dtype="<f8")
                    f.write(aead.encrypt(out._nonce(i), memoryview(block_values).cast("B"), out._aad(i)))
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return out

    @property
    def shape(self) -> tuple[int]:
        return (self.dim,)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("an update file is read by contiguous slices only")
        a, b, _ = index.indices(self.dim)
        if b <= a:
            return np.empty(0)
        first, last = a // self.block, (b - 1) // self.block
        blocks = [self._block(i) for i in range(first, last + 1)]
        values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        return values[a - first * self.block:b - first * self.block]

    def _block(self, i: int) -> np.ndarray:
        n = min(self.block, self.dim - i * self.block)
        size = 8 * n + TAG_BYTES
        try:
            with open(self.path, "rb") as f:
                f.seek(i * (8 * self.block + TAG_BYTES))
                data = f.read(size)
        except OSError as exc:
            raise SnapshotError(f"the update file is gone: {exc}") from exc
        try:
            if len(data) != size:
                raise InvalidTag
            plain = AESGCM(self.key).decrypt(self._nonce(i), data, self._aad(i))
        except InvalidTag as exc:
            raise SnapshotError(f"block {i} of the update file is not what this client wrote") from exc
        return np.frombuffer(plain, dtype="<f8")

    @staticmethod
    def _nonce(i: int) -> bytes:
        return i.to_bytes(12, "big")  # one fresh key per file: every (key, nonce) pair is used once

    def _aad(self, i: int) -> bytes:
        return UPDATE_LABEL + b"".join(v.to_bytes(8, "big") for v in (self.dim, self.block, i))

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
