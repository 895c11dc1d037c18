"""The effects :class:`training.engine.core.RoundEngine` emits (drained by a driver, which performs their I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from secagg.errors import SecAggError
from training.engine.rounds import RoundRecord
from training.engine.state import ServerState

__all__ = ["Task", "ModelReply", "Mail", "ToKeyholder", "Persist", "RoundDone", "OpenFailed", "Effect"]


@dataclass(frozen=True)
class Task:
    """Client ``cid`` is in round ``round_id``: its public ``header`` (type, round ids, scheme, params with the
    strategy terms) and the model to train on (None for an asynchronous round: members trained already)."""

    cid: int
    round_id: int
    header: dict
    model: np.ndarray | None


@dataclass(frozen=True)
class ModelReply:
    cid: int
    version: int
    model: np.ndarray
    proofs: list = field(default_factory=list)  # the steps since the client's last verified version


@dataclass(frozen=True)
class Mail:
    cid: int
    round_id: int
    payload: bytes


@dataclass(frozen=True)
class ToKeyholder:
    round_id: int
    payload: bytes


@dataclass(frozen=True)
class Persist:
    state: ServerState


@dataclass(frozen=True)
class RoundDone:
    record: RoundRecord
    error: SecAggError | None = None  # why an aborted round was aborted


@dataclass(frozen=True)
class OpenFailed:
    cohort: tuple[int, ...]
    error: SecAggError


Effect = Task | ModelReply | Mail | ToKeyholder | Persist | RoundDone | OpenFailed
