"""A client's check of the global model it is sent: the server step replayed from the key holder's signed sums.

Under CKKS and packed BFV the aggregator applies the aggregation rule, so nothing in the secure sum stops it from
publishing a model of its choosing. Every model a client receives (a task's model, or an asynchronous
``ModelReply``) therefore comes with *proofs*: for each server step since the version this client last verified,
the round's public parameters and the key holder's signed release of its sum (:mod:`secagg.he_release`). The
client replays the rule (:class:`~training.engine.terms.StrategyStep`, with its own copy of the rule's state, e.g.
Adam's moments or an asynchronous buffer's versions) and refuses a model that does not follow
(:class:`UnverifiedModelError`).

Invariants: a model is accepted only if it equals (float32, within 1e-6 relative) the replay of every step from
the last accepted model; each step's sum is the key holder's (signed under the bundle the client trusts), of that
round, over that round's cohort, under exactly the parameters the replay uses (their digest is in the release); a
version never goes back; a refused model leaves the replica as it was. The first model a client sees is its anchor
(trusted; if it is version 0 and the client knows the initial model, it must be that). Masking sums are unmasked
by the server itself: there is no release to replay, so the model is taken as sent (docs/threat-model.md: no integrity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from secagg.errors import MalformedMessageError, VerificationError
from training.engine.roles import Scheme
from training.engine.terms import StrategyStep

__all__ = ["ModelAudit", "UnverifiedModelError", "proof", "MAX_PROOFS"]

MAX_PROOFS = 8  # server steps the aggregator keeps proofs of at most (a client further behind cannot verify and
# refuses); of those it keeps only the steps some client it knows still needs (from the version it last verified,
# or, for one that has not said yet, the version it was last sent): a release is 8 bytes per model value


class UnverifiedModelError(VerificationError):
    """The model the aggregator sent does not follow from the key holder's signed sums under the rule."""


def proof(round_no: int, params: dict[str, Any], release: bytes | None) -> dict[str, Any]:
    """The proof of server step ``round_no``: its task parameters (JSON) and the signed release, if any, as bytes
    (drivers send it in the body: :func:`training.engine.codec.proofs_out`)."""
    return {"round": int(round_no), "params": params, "release": None if release is None else bytes(release)}


class ModelAudit:
    """One client's replica of the server step; :meth:`check` every model before training on it."""

    def __init__(self, scheme: Scheme, step: StrategyStep, initial: np.ndarray | None = None) -> None:
        self.scheme, self.step = scheme, StrategyStep(step.strategy)  # the rule only (no reference loss to compute)
        self.initial = None if initial is None else np.asarray(initial, dtype=np.float64)
        self.version: int | None = None
        self.model: np.ndarray | None = None

    def check(self, version: int, model: np.ndarray, proofs: Sequence[dict] | None, context: bytes | None) -> None:
        """Accept ``model`` as global ``version`` or raise :class:`UnverifiedModelError` (nothing changes)."""
        got = np.asarray(model, dtype=np.float64)
        if not self.scheme.needs_keyholder:  # nothing to replay: the version only, never a copy of the model
            self.version = version
            return
        if self.version is None:
            if version == 0 and self.initial is not None and not _same(self.initial, got):
                raise UnverifiedModelError("the initial model is not the one this client was configured with")
            self.version, self.model = version, got
            self.step.start(got, version)
            return
        if version < self.version:
            raise UnverifiedModelError(f"model version {version} is older than the verified {self.version}")
        saved = self.step.state_dict()
        try:
            replica, at = self._replay(version, proofs or [], context)
            if at != version:
                raise UnverifiedModelError(f"no proofs for the steps from version {at} to {version}")
            if not _same(replica, got):
                raise UnverifiedModelError(f"the model of version {version} does not follow from the key "
                                           "holder's signed sums under the aggregation rule")
        except Exception:
            self.step.load_state_dict(saved)  # the replica stays at the last accepted model
            raise
        self.version, self.model = version, replica

    def _replay(self, version: int, proofs: Sequence[dict], context: bytes | None) -> tuple[np.ndarray, int]:
        assert self.model is not None and self.version is not None
        if version == self.version:
            return self.model, version
        if context is None:
            raise UnverifiedModelError("no public bundle to check the key holder's releases against")
        model, at = self.model, self.version
        try:
            for p in sorted(proofs, key=lambda p: int(p.get("round", -1)) if isinstance(p, dict) else -1):
                if not isinstance(p, dict) or int(p.get("round", -1)) < at:
                    continue
                if int(p["round"]) != at or not isinstance(p.get("release"), (bytes, bytearray, memoryview)):
                    break
                params = p["params"]
                agg = self.scheme.decode_release(params, context, bytes(p["release"]))
                model = np.asarray(self.step.apply(model, agg, at, params.get("strategy", {})), dtype=np.float64)
                at += 1
                if at == version:
                    break
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"malformed model proof: {exc!r}") from exc
        return model, at


def _same(replica: np.ndarray, got: np.ndarray) -> bool:
    if replica.shape != got.shape:
        return False
    a = replica.astype(np.float32).astype(np.float64)
    return bool(np.all(np.abs(a - got) <= 1e-6 * np.maximum(1.0, np.abs(a))))
