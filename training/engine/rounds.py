"""Round bookkeeping of the engine: the opening policy, one attempt's state, and the one record of a round."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from secagg.errors import UnknownClientError
from secagg.roles import AggregateResult, AggregatorRole

__all__ = ["RoundPolicy", "RoundRecord", "Round"]


@dataclass(frozen=True)
class RoundPolicy:
    """When rounds open and how long each stage may wait (seconds of the driver's clock, real or simulated).

    A round opens when ``cohort_size`` clients wait, or ``min_clients`` have waited ``checkin_timeout``.
    """

    rounds: int
    cohort_size: int
    min_clients: int
    checkin_timeout: float = 5.0
    stage_timeout: float = 5.0
    max_closes: int = 4
    max_aborts: int | None = 16  # consecutive aborted attempts after which the federation stops (None: never)
    train_timeout: float = 0.0  # extra time of a round's first stage: clients train before their first message
    clients: int | None = None  # the federation's population: once fewer than min_clients have not retired
                                # (their privacy budget cannot afford a round), the federation stops


@dataclass
class RoundRecord:
    """What one finished (or aborted) attempt did: the one record every driver reports.

    Bytes: ``up``/``down`` are secagg message payloads from/to each client (drivers add what they send besides:
    tasks, models, pad seeds sent straight to the key holder), ``keyholder_bytes`` those exchanged with the key
    holder, ``task_bytes`` the task envelopes and (asynchronous) model replies sent since the previous round
    opened; ``cert_bytes`` the signing certificates served to members that had not cached them. ``seconds`` is
    the driver's clock from opening to the end (a simulated clock for simulated drivers).
    """

    round: int
    round_id: int
    cohort: tuple[int, ...]
    status: str
    seconds: float
    up: dict[int, int] = field(default_factory=dict)
    down: dict[int, int] = field(default_factory=dict)
    task_bytes: int = 0
    keyholder_bytes: int = 0
    result: AggregateResult | None = None
    reason: str = ""
    terms: dict[str, Any] = field(default_factory=dict)
    cert_bytes: int = 0

    @property
    def bytes_up(self) -> int:
        return sum(self.up.values())

    @property
    def bytes_down(self) -> int:
        return sum(self.down.values())

    @property
    def staleness(self) -> dict[int, int]:
        """Asynchronous rounds: how many versions behind each member's update was (0 for synchronous ones)."""
        bases = self.terms.get("base_versions")
        if bases is None:
            return {c: 0 for c in (self.result.contributors if self.result else self.cohort)}
        return {int(c): self.round - int(b) for c, b in bases.items()}


@dataclass
class Round:
    """An open (or just closed) attempt: its cohort, role, task header, mailboxes, public terms, the signing
    identities its task names by fingerprint (signed masking; served to members that do not hold them) and
    byte counts."""

    round_id: int
    round: int
    cohort: frozenset[int]
    role: AggregatorRole
    header: dict[str, Any]
    mail: dict[int, deque[bytes]]
    terms: dict[str, Any] = field(default_factory=dict)
    identities: dict[int, Any] = field(default_factory=dict)
    started: float = 0.0
    status: str = "open"
    reason: str = ""
    up: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    down: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    task_bytes: int = 0
    keyholder_bytes: int = 0
    cert_bytes: int = 0
    stage: str = ""
    stage_since: float = 0.0
    closes: int = 0
    extra: float = 0.0  # extra time of the current stage (the first stage's training time)
    keyholder_busy: bool = False

    def certificates(self, ids: list[int] | None) -> bytes:
        """JSON ``{id: pem}`` of the signing certificates this round names for ``ids`` (UnknownClientError for
        another id), or with ``ids`` None ``{id: fingerprint}`` of all of them; counted in :attr:`cert_bytes`."""
        if ids is None:
            body = json.dumps({str(c): i.fingerprint for c, i in sorted(self.identities.items())}).encode()
        elif bad := sorted(set(ids) - set(self.identities)):
            raise UnknownClientError(f"round {self.round_id} names no signing certificate for clients {bad[:8]}")
        else:
            body = json.dumps({str(c): self.identities[c].pem for c in sorted(set(ids))}).encode()
        self.cert_bytes += len(body)
        return body

    def record(self, now: float, result: AggregateResult | None) -> RoundRecord:
        return RoundRecord(self.round, self.round_id, tuple(sorted(self.cohort)), self.status, now - self.started,
                           dict(self.up), dict(self.down), self.task_bytes, self.keyholder_bytes, result,
                           self.reason, self.terms, self.cert_bytes)
