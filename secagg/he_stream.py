"""Streaming of the HE round (:mod:`secagg.he_round`): the aggregator's bounded window of running sums.

A contribution of ``chunks`` ciphertexts travels as *parts*: contiguous ranges ``[first, first + k)`` in order, the
last part carrying the client's sealed tags (:func:`secagg.he_pads.seal_tags`). The aggregator adds each part into
per-chunk running sums and forwards the sum of a chunk range to the key holder as soon as every contributor's part
covering it is in, so it holds at most ``window`` chunks of sums plus one part, whatever ``n`` and ``dim``.

Invariants (:class:`StreamedSum`):

* parts of one client arrive in order and never overlap or pass the end (``MalformedMessageError``); the last part,
  and only it, carries sealed tags;
* a part that starts ``window`` or more chunks past the forwarded frontier is refused with
  :class:`~secagg.errors.BackpressureError` and changes nothing: the sender resends it once the window moved. So
  the sums held stay below ``window`` plus one part: a whole contribution (one part, what a client that does not
  stream sends) is taken whole, exactly one running sum of it, however many clients send one;
* the contributors are fixed once every participant has started (sent a part), or at the deadline
  (:meth:`StreamedSum.fix`) to those that started: a client whose residues are in a sum cannot be taken out of it,
  so nothing is forwarded before the set is fixed, and a client not in it is refused (``StageError``);
* a contributor that has not finished by the next deadline fails the round (:meth:`StreamedSum.unfinished`).
"""

from __future__ import annotations

import numpy as np

from secagg.errors import BackpressureError, MalformedMessageError, StageError
from secagg.hazmat import rlwe

__all__ = ["StreamedSum", "DEFAULT_WINDOW_BYTES", "window_chunks"]

DEFAULT_WINDOW_BYTES = 256 << 20  # running sums the aggregator keeps at most (unpacked uint64 residues)


def window_chunks(layout: rlwe.RingLayout, window_bytes: int = DEFAULT_WINDOW_BYTES) -> int:
    """Chunks of running sums that fit ``window_bytes`` (at least 1)."""
    return max(1, window_bytes // (8 * int(np.prod(layout.shape))))


class StreamedSum:
    """Per-chunk running sums of one round over ``participants`` for contributions of ``chunks`` ciphertexts."""

    def __init__(self, participants: tuple[int, ...], chunks: int, layout: rlwe.RingLayout, window: int) -> None:
        self.participants, self.chunks, self.window, self._layout = participants, chunks, window, layout
        self._next: dict[int, int] = {}  # client -> next chunk it owes (absent: not started)
        self._sums: dict[int, np.ndarray] = {}  # chunk -> running sum (2, L, N)
        self._count: dict[int, int] = {}  # chunk -> contributions in its sum
        self.tags: dict[int, bytes] = {}  # client -> its sealed tags (finished clients)
        self.frontier = 0  # chunks below it were forwarded
        self.contributors: tuple[int, ...] | None = None

    @property
    def started(self) -> tuple[int, ...]:
        """Clients with residues in the sums, in arrival order of their first part."""
        return tuple(self._next)

    def check(self, client: int, first: int, count: int, sealed_tags: bytes) -> None:
        """Raise unless client's next part is ``[first, first + count)`` and fits the window (changes nothing)."""
        expected = self._next.get(client, 0)
        if client in self.tags:
            raise MalformedMessageError(f"client {client} already sent its whole contribution")
        if self.contributors is not None and client not in self.contributors:
            raise StageError(f"client {client} did not start before the contributors were fixed")
        if first != expected or count < 1 or first + count > self.chunks:
            raise MalformedMessageError(f"part [{first}, {first + count}) from client {client}; expected a part "
                                        f"starting at {expected} within {self.chunks} chunks")
        if bool(sealed_tags) != (first + count == self.chunks):
            raise MalformedMessageError("sealed tags belong in the last part, and only there")
        if first >= self.frontier + self.window:
            raise BackpressureError(f"part starts at chunk {first}, past the window "
                                    f"[{self.frontier}, {self.frontier + self.window}): resend it later")

    def add(self, client: int, first: int, residues: np.ndarray, sealed_tags: bytes) -> None:
        """Add a part checked by :meth:`check` (``residues``: ``(k, 2, L, N)``, reduced, owned by this sum from
        now on: a chunk that starts a running sum is kept, not copied)."""
        for i, res in enumerate(residues):
            k = first + i
            if k in self._sums:
                rlwe.add_into(self._sums[k], res, self._layout)
                self._count[k] += 1
            else:  # the part is this role's own fresh array (rlwe.unpack): its chunks become the sums, uncopied
                self._sums[k], self._count[k] = res, 1
        self._next[client] = first + residues.shape[0]
        if sealed_tags:
            self.tags[client] = sealed_tags
        if self.contributors is None and len(self._next) == len(self.participants):
            self.fix()

    def fix(self) -> tuple[int, ...]:
        """Fix the contributors to the clients that started (sorted)."""
        if self.contributors is None:
            self.contributors = tuple(sorted(self._next))
        return self.contributors

    def unfinished(self) -> tuple[int, ...]:
        """Contributors that have not sent their last part."""
        return tuple(c for c in (self.contributors or ()) if c not in self.tags)

    def ready(self) -> int:
        """Complete chunks from the frontier on (every contributor's residues are in), 0 before the set is fixed."""
        if not self.contributors:
            return 0
        k, want = self.frontier, len(self.contributors)
        while k < self.chunks and self._count.get(k) == want:
            k += 1
        return k - self.frontier

    def take(self, count: int) -> list[np.ndarray]:
        """The ``count`` complete sums from the frontier (each ``(2, L, N)``); the frontier moves past them."""
        lo = self.frontier
        out = [self._sums.pop(k) for k in range(lo, lo + count)]
        for k in range(lo, lo + count):
            del self._count[k]
        self.frontier += count
        return out

    def clear(self) -> None:
        self._sums.clear()
        self._count.clear()
