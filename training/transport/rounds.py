"""Round bookkeeping of the aggregator's round engine: the opening policy, one attempt's state, and its record."""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from secagg.errors import UnknownClientError
from secagg.roles import AggregateResult, AggregatorRole
from training.transport.certs import SigningIdentity

__all__ = ["RoundPolicy", "RoundRecord", "Round"]


@dataclass(frozen=True)
class RoundPolicy:
    """When rounds open and how long each stage may wait. ``min_clients`` is the smallest cohort ever opened."""

    rounds: int
    cohort_size: int
    min_clients: int
    checkin_timeout: float = 5.0
    stage_timeout: float = 5.0
    max_closes: int = 4
    train_timeout: float = 0.0  # extra time of a round's first stage: clients train before their first message


@dataclass
class RoundRecord:
    """What one finished (or aborted) attempt did; passed to the ``on_round`` callback.

    Bytes: ``bytes_up``/``bytes_down`` are secagg message payloads from/to clients, ``keyholder_bytes`` those
    exchanged with the key holder, ``task_bytes`` the task envelopes (round parameters + global model) sent out,
    and for asynchronous strategies the model replies sent since the previous round opened; ``cert_bytes`` the
    signing certificates served to members that had not cached them.
    """

    round: int
    round_id: int
    cohort: tuple[int, ...]
    status: str
    seconds: float
    bytes_up: int
    bytes_down: int
    task_bytes: int = 0
    keyholder_bytes: int = 0
    result: AggregateResult | None = None
    reason: str = ""
    terms: dict[str, Any] = field(default_factory=dict)
    cert_bytes: int = 0


@dataclass
class Round:
    """An open (or just closed) attempt: its cohort, role, task, mailboxes, public terms, the signing certificates
    its task names by fingerprint (signed masking; served to members that do not hold them) and byte counts."""

    round_id: int
    round: int
    cohort: frozenset[int]
    role: AggregatorRole
    task: bytes
    mail: dict[int, deque[bytes]]
    terms: dict[str, Any] = field(default_factory=dict)
    identities: dict[int, SigningIdentity] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    status: str = "open"
    reason: str = ""
    to_keyholder: deque[bytes] = field(default_factory=deque)
    bytes_up: int = 0
    bytes_down: int = 0
    task_bytes: int = 0
    keyholder_bytes: int = 0
    cert_bytes: int = 0

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
