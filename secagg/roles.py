"""The protocol interface every scheme implements: sans-I/O roles that consume and produce bytes.

A round has three kinds of role. Each is a state machine that never performs I/O; a driver (``simulate``, the
in-process federation, the gRPC services) moves the bytes and decides when a stage's deadline has passed.

* :class:`ClientRole` (client encode): ``start(update, weight)`` returns the client's first messages; each later
  message from the aggregator goes to ``receive``. Clients only ever talk to the aggregator, which routes.
* :class:`AggregatorRole` (untrusted combine): ``receive(sender, payload)`` for every inbound message; it advances
  a stage by itself once every expected sender answered, and ``close_stage()`` forces the advance at a deadline,
  treating silent clients as dropped. It only ever holds ciphertexts or masked vectors. When ``done``,
  ``result()`` is the finalized aggregate.
* :class:`FinalizerRole`: the CKKS key holder (decrypts the aggregate only). For masking the aggregator finalizes
  itself by unmasking the sum with Shamir shares, so the scheme has no separate finalizer.

Addresses are ints: clients are ``>= 0``; :data:`AGGREGATOR` and :data:`KEYHOLDER` are negative.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from secagg.errors import MalformedMessageError

__all__ = ["AGGREGATOR", "KEYHOLDER", "Outbound", "AggregateResult", "ClientRole", "AggregatorRole",
           "FinalizerRole", "RoundSetup", "StagedRole", "message_tag"]

AGGREGATOR = -1
KEYHOLDER = -2


@dataclass(frozen=True)
class Outbound:
    """A message a role wants delivered to ``to`` (a client id, AGGREGATOR or KEYHOLDER)."""

    to: int
    payload: bytes


@dataclass(frozen=True)
class AggregateResult:
    """The finalized sum over ``contributors``: ``weighted_sum`` = Σ w_i x_i and ``total_weight`` = Σ w_i."""

    weighted_sum: np.ndarray
    total_weight: float
    contributors: tuple[int, ...]
    dropped: tuple[int, ...] = field(default=())

    @property
    def mean(self) -> np.ndarray:
        """Σ w_i x_i / Σ w_i over the contributors, as float64."""
        return self.weighted_sum / self.total_weight


class StagedRole:
    """Base of the scheme roles: ``stage`` names the protocol stage; ``done`` once it is ``"done"``."""

    _stage: str

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage == "done"


@runtime_checkable
class ClientRole(Protocol):
    client_id: int

    @property
    def stage(self) -> str: ...

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]: ...

    def receive(self, payload: bytes) -> list[Outbound]: ...

    @property
    def done(self) -> bool: ...


@runtime_checkable
class AggregatorRole(Protocol):
    @property
    def stage(self) -> str: ...

    def receive(self, sender: int, payload: bytes) -> list[Outbound]: ...

    def close_stage(self) -> list[Outbound]: ...

    @property
    def done(self) -> bool: ...

    def result(self) -> AggregateResult: ...


@runtime_checkable
class FinalizerRole(Protocol):
    def receive(self, sender: int, payload: bytes) -> list[Outbound]: ...


@dataclass(frozen=True)
class RoundSetup:
    """All roles of one round as built by a scheme's ``setup.build_round``.

    ``drop_tag`` is the wire tag of the message a client "dropped" in ``simulate`` never sends (masking: its masked
    input; ckks: its contribution).
    """

    clients: dict[int, ClientRole]
    aggregator: AggregatorRole
    finalizer: FinalizerRole | None
    drop_tag: int


def message_tag(payload: bytes) -> int:
    """The wire tag of an encoded message, read from its header without decoding the body."""
    if len(payload) < 4 or payload[:2] != b"SA":
        raise MalformedMessageError("not a secagg message")
    return struct.unpack_from("<B", payload, 3)[0]
