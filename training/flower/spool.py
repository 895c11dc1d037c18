"""A client's streamed contribution on its own disk, between the Flower messages that carry it part by part.

Flower answers one message with one reply, and a deployed SuperNode starts a fresh process per message, so a
contribution made as a stream (:meth:`secagg.he_round.HEClient.stream`, a masking client's streamed delivery
answer) cannot stay a live iterator between the ServerApp's ``part`` requests. The parts after the first are
written, as they are made, to one file of the client's own (mode 0600); the sealed node state keeps only a
:class:`Spool` record (path, offsets, SHA-256 of every part), so a later process serves part ``i`` by reading it
back. Nothing secret is on disk: a part is what the client sends the aggregator anyway (padded ciphertexts or
masked values).

Invariants: a part is served only as written (its digest is checked; a changed, truncated or missing file is a
:class:`~secagg.snapshot.SnapshotError`); parts are served in order (a request repeated after a lost reply gets the
same bytes again; any other index is a ``StageError``); the file is removed when the round ends for this client
(the ServerApp's ``end``, or the next task: :meth:`Spool.remove`). Memory: one part at a time.
Written by hand: a file of parts with digests is all it needs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from secagg.errors import StageError
from secagg.snapshot import SnapshotError

__all__ = ["Spool", "spool_dir"]


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


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
