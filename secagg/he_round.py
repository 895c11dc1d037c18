"""The one-shot round both homomorphic-encryption schemes run (:mod:`secagg.ckks`, :mod:`secagg.packed`).

Each client sends one encrypted contribution to the aggregator and receives nothing. The aggregator adds
ciphertexts without any key and sends the sum to the key holder once every participant submitted, or at
``close_stage()`` with whoever did. The key holder decrypts only an aggregate from the aggregator, under its own
session, of at least ``min_contributors`` clients, at most once per round.

Invariants kept here for both schemes:

* the aggregator checks every contribution (stage, participant, round, sender = the client it names, no duplicate,
  then the scheme's own checks in ``_add``) before any of it touches the running sum, so a rejected message never
  corrupts it;
* fewer than ``min_contributors`` at the deadline raises ``DropoutError`` (stage ``"failed"``), nothing decrypted;
* a key-holder result must answer the aggregate that was sent (round and contributor set).

Aggregator stages: ``"collect"`` -> ``"finalize"`` (sum sent, waiting for the key holder) -> ``"done"``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import tenseal as ts

from secagg.encoding import validate_update
from secagg.errors import AuthenticationError, ConfigurationError, DropoutError, DuplicateMessageError, \
    MalformedMessageError, MalformedUpdateError, StageError, TooFewContributorsError, UnknownClientError, \
    WrongRoundError
from secagg.messages import decode
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, Outbound, StagedRole

__all__ = ["check_int", "fresh_level", "load_ciphertext", "HEClient", "HEAggregator", "HEKeyHolder"]


def check_int(name: str, v: object, lo: int = 0) -> int:
    """``v`` if it is an int (not a bool) ``>= lo``; otherwise ConfigurationError."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigurationError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def fresh_level(context: ts.Context) -> list[int]:
    """parms_id of the fresh (first data) level, the only level any contribution or aggregate may use."""
    return list(context.seal_context().data.first_parms_id())


def load_ciphertext(vector_from: Callable[[ts.Context, bytes], Any], context: ts.Context, data: bytes, *,
                    length: int, level: list[int], ntt: bool, kind: str) -> tuple[Any, Any]:
    """Deserialize one chunk with ``vector_from`` and return ``(vector, ciphertext)``; anything but one valid
    2-polynomial ciphertext (NTT form iff ``ntt``) at ``level`` holding ``length`` values raises
    MalformedMessageError."""
    if not data:
        raise MalformedMessageError("empty ciphertext")
    try:
        vec = vector_from(context, data)
        cts = vec.ciphertext()
    except Exception as exc:  # ValueError/RuntimeError from protobuf or SEAL's validity checks
        raise MalformedMessageError(f"ciphertext does not deserialize under this context: {exc}") from exc
    if len(cts) != 1:
        raise MalformedMessageError(f"chunk holds {len(cts)} ciphertexts, expected 1")
    ct = cts[0]
    if ct.size() != 2 or ct.is_transparent() or ct.is_ntt_form() != ntt:
        raise MalformedMessageError(f"chunk is not a valid 2-polynomial {kind} ciphertext")
    if list(ct.parms_id()) != level:
        raise MalformedMessageError("ciphertext is at an unexpected level or from other parameters")
    if vec.size() != length:
        raise MalformedMessageError(f"chunk holds {vec.size()} values, expected {length}")
    return vec, ct


class HEClient(StagedRole):
    """Stages ``"ready"`` -> ``start`` -> ``"done"``; a refused input leaves the client ready to retry."""

    client_id: int

    def _begin(self, update: np.ndarray, weight: float) -> tuple[np.ndarray, float]:
        """The validated ``(update, weight)``: a finite float64 vector and a finite float."""
        if self._stage != "ready":
            raise StageError(f"client {self.client_id} already submitted its contribution")
        x = validate_update(update)
        try:
            w = float(weight)
        except (TypeError, ValueError) as exc:
            raise MalformedUpdateError(f"weight must be a number, got {weight!r}") from exc
        if not math.isfinite(w):
            raise MalformedUpdateError(f"weight must be finite, got {w}")
        return x, w

    def receive(self, payload: bytes) -> list[Outbound]:
        """HE clients are sent nothing: always raises StageError."""
        raise StageError(f"client {self.client_id} of a one-shot HE round expects no messages "
                         f"(stage {self._stage!r})")


class HEAggregator(StagedRole, ABC):
    """Collects one contribution per participant; subclasses check and add ciphertexts and decode the result."""

    contribution_type: ClassVar[type]
    result_type: ClassVar[type]

    def _init_round(self, participants: Iterable[int], *, dim: int, round_id: int, min_contributors: int,
                    max_cohort: int | None = None) -> None:
        ids = [int(p) for p in participants]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ConfigurationError("participants must be distinct client ids >= 0, at least one")
        if max_cohort is not None and len(ids) > max_cohort:
            raise ConfigurationError(f"{len(ids)} participants exceed max_cohort={max_cohort}: their lane sums "
                                     "could carry into each other; use PackedParams(max_cohort=...) of the cohort")
        check_int("dim", dim, 1), check_int("round_id", round_id), check_int("min_contributors", min_contributors, 1)
        if min_contributors > len(ids):
            raise ConfigurationError(f"min_contributors={min_contributors} exceeds the {len(ids)} participants")
        self.participants, self.dim, self.round_id = tuple(sorted(ids)), dim, round_id
        self.min_contributors = min_contributors
        self._sum: list[Any] | None = None
        self._received: list[int] = []
        self._sent: tuple[int, ...] = ()
        self._result: AggregateResult | None = None
        self._stage = "collect"

    @property
    def received(self) -> tuple[int, ...]:
        """Clients whose contribution is in the running sum, in arrival order."""
        return tuple(self._received)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """A client's contribution, or the key holder's result."""
        if sender == KEYHOLDER:
            return self._on_result(payload)
        if self._stage != "collect":
            raise StageError(f"contribution from {sender} arrived in stage {self._stage!r}; collection is closed")
        if sender not in self.participants:
            raise UnknownClientError(f"sender {sender} is not a participant of round {self.round_id}")
        msg = self.contribution_type.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"contribution for round {msg.round_id}; this is round {self.round_id}")
        if msg.client_id != sender:
            raise AuthenticationError(f"sender {sender} sent a contribution naming client {msg.client_id}")
        if sender in self._received:
            raise DuplicateMessageError(f"client {sender} already contributed to round {self.round_id}")
        self._add(msg)
        self._received.append(sender)
        return self._send() if len(self._received) == len(self.participants) else []

    def close_stage(self) -> list[Outbound]:
        """Deadline: aggregate whoever submitted (``DropoutError`` if too few). Waiting on the key holder: ``[]``."""
        if self._stage == "finalize":
            return []
        if self._stage != "collect":
            raise StageError(f"nothing to close in stage {self._stage!r}")
        if len(self._received) < self.min_contributors:
            self._stage, self._sum = "failed", None
            raise DropoutError(f"only {len(self._received)} of {len(self.participants)} clients contributed to "
                               f"round {self.round_id}; at least {self.min_contributors} needed")
        return self._send()

    def _send(self) -> list[Outbound]:
        assert self._sum is not None
        self._sent = tuple(sorted(self._received))
        msg = self._aggregate(self._sent, tuple(v.serialize() for v in self._sum))
        self._sum, self._stage = None, "finalize"
        return [Outbound(KEYHOLDER, msg.to_bytes())]

    def _on_result(self, payload: bytes) -> list[Outbound]:
        if self._stage != "finalize":
            raise StageError(f"a key-holder result arrived in stage {self._stage!r}")
        msg = self.result_type.from_bytes(payload)
        if msg.round_id != self.round_id:
            raise WrongRoundError(f"result for round {msg.round_id}; this is round {self.round_id}")
        if msg.contributors != self._sent:
            raise MalformedMessageError("result names other contributors than the aggregate that was sent")
        weighted_sum, total = self._decode(msg)
        dropped = tuple(i for i in self.participants if i not in self._sent)
        self._result = AggregateResult(weighted_sum, total, self._sent, dropped)
        self._stage = "done"
        return []

    def result(self) -> AggregateResult:
        """Σ w_i x_i and Σ w_i over the contributors; StageError before ``done``."""
        if self._result is None:
            raise StageError(f"no result in stage {self._stage!r}")
        return self._result

    @abstractmethod
    def _add(self, msg: Any) -> None:
        """Check ``msg`` fully (session, layout, ciphertexts), then add it to ``self._sum``."""

    @abstractmethod
    def _aggregate(self, contributors: tuple[int, ...], chunks: tuple[bytes, ...]) -> Any:
        """The aggregate message for the key holder."""

    @abstractmethod
    def _decode(self, msg: Any) -> tuple[np.ndarray, float]:
        """``(Σ w_i x_i, Σ w_i)`` from the key holder's result (already matched to the aggregate sent)."""


class HEKeyHolder(ABC):
    """Decrypts aggregates only; subclasses own the secret context and the decryption."""

    aggregate_type: ClassVar[type]
    _public: bytes

    def _init_keyholder(self, min_contributors: int, max_contributors: int | None = None) -> None:
        top = max_contributors if max_contributors is not None else math.inf
        if isinstance(min_contributors, bool) or not isinstance(min_contributors, int) or \
                not 2 <= min_contributors <= top:
            bound = "" if max_contributors is None else f" and <= {max_contributors}"
            raise ConfigurationError(f"min_contributors must be an int >= 2{bound} (a sum of one client is that "
                                     f"client's update), got {min_contributors!r}")
        self.min_contributors, self._max_contributors = min_contributors, max_contributors
        self._finalized: set[int] = set()

    def public_context(self) -> bytes:
        """The serialized context with the public key only: no secret, relinearization or Galois keys."""
        return self._public

    @property
    def finalized_rounds(self) -> frozenset[int]:
        """Round ids whose aggregate has been decrypted (each can be decrypted only once)."""
        return frozenset(self._finalized)

    def receive(self, sender: int, payload: bytes) -> list[Outbound]:
        """Decrypt the aggregate in ``payload`` from the aggregator; return the result addressed to it."""
        if sender != AGGREGATOR:
            raise AuthenticationError(f"the key holder accepts aggregates from the aggregator only, not {sender}")
        msg = decode(payload)
        if not isinstance(msg, self.aggregate_type):
            raise MalformedMessageError(f"the key holder decrypts {self.aggregate_type.__name__} only, "
                                        f"got {type(msg).__name__}")
        self._check_session(msg)
        if len(msg.contributors) < self.min_contributors:
            raise TooFewContributorsError(
                f"aggregate of {len(msg.contributors)} contributor(s); at least {self.min_contributors} required")
        if self._max_contributors is not None and len(msg.contributors) > self._max_contributors:
            raise MalformedMessageError(f"aggregate of {len(msg.contributors)} contributors exceeds max_cohort="
                                        f"{self._max_contributors}: lanes could carry into each other")
        if msg.round_id in self._finalized:
            raise DuplicateMessageError(f"an aggregate of round {msg.round_id} was already decrypted")
        result = self._decrypt(msg)
        self._finalized.add(msg.round_id)
        return [Outbound(AGGREGATOR, result.to_bytes())]

    @abstractmethod
    def _check_session(self, msg: Any) -> None:
        """DecryptionError unless ``msg`` was made under this key holder's public context."""

    @abstractmethod
    def _decrypt(self, msg: Any) -> Any:
        """The result message for the aggregate ``msg`` (all checks passed); nothing changes if it raises."""
