"""The gRPC services' driver of the round engine: RPC → event, timer → tick, effects → mailboxes and checkpoints.

All round logic lives in :class:`training.engine.RoundEngine`; this module only adds what a threaded network
server needs. Threads: gRPC handlers call :meth:`Coordinator.checkin`, :meth:`send`, :meth:`receive` and
:meth:`certificates`; one driver thread runs :meth:`run` (ticks, key-holder calls, ``on_round``). Every engine call
happens under one condition variable, so the (not thread-safe) roles see one call at a time; the key holder is
called without it. Effects: ``Persist`` is written (``checkpoint_path``) before the call that caused it returns, so
an acknowledged privacy report or a handed-out round id is durable; a ``Task`` becomes the member's task envelope
(header + float32 model, :func:`~.wire.model_bytes`); ``Mail`` stays in the engine's round mailboxes, which
:meth:`receive` drains; ``ToKeyholder`` is sent by the driver thread with ``finalize``; after an aborted round the
key holder's public context is re-fetched with ``refresh`` (a key holder that restarted with fresh keys refuses
aggregates made under the old one, and the next round is planned under the context it serves now).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from secagg.errors import SecAggError
from secagg.roles import Outbound
from training.engine.core import (Effect, ModelReply, Persist, RoundDone, RoundEngine, Task, ToKeyholder,
                                  as_secagg)
from training.engine.roles import Scheme
from training.engine.rounds import RoundPolicy, RoundRecord
from training.engine.state import ServerState
from training.engine.terms import StrategyStep
from training.services import checkpoint
from training.services.pki.certs import SigningIdentity
from training.engine.codec import proofs_out
from training.services.wire import model_bytes, pack

__all__ = ["RoundPolicy", "Coordinator", "RoundRecord"]

log = logging.getLogger("training.services.aggregator")
Finalize = Callable[[int, bytes], list[Outbound]]


class Coordinator:
    """Serves ``policy.rounds`` rounds of ``scheme`` to gRPC handlers; see the module docstring.

    ``step`` is the server half of the strategy (default FedAvg); ``finalize(round_id, payload)`` calls the key
    holder; ``on_round`` gets each attempt's record on the driver thread."""

    def __init__(self, scheme: Scheme, state: ServerState, policy: RoundPolicy, *,
                 checkpoint_path: str | None = None, context: bytes | None = None,
                 finalize: Finalize | None = None, step: StrategyStep | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 ledger_budget: tuple[float, float] = (1e9, 1e-5),
                 refresh: Callable[[], bytes] | None = None) -> None:
        if scheme.needs_keyholder and (finalize is None or context is None):
            raise ValueError(f"scheme {scheme.name} needs a key holder (context and finalize)")
        self.engine = RoundEngine(scheme, state, policy, step=step, context=context, ledger_budget=ledger_budget)
        self.scheme, self.policy = scheme, policy
        self.checkpoint_path, self.finalize, self.on_round, self.refresh = checkpoint_path, finalize, on_round, refresh
        self.cond = threading.Condition()
        self.tasks: dict[int, tuple[int, tuple[bytes, ...]]] = {}  # client -> (round id, task envelope pieces)
        self._body: tuple[tuple[int, int] | None, bytes] = (None, b"")  # (round, model id) -> its float32 bytes
        self.failure: BaseException | None = None
        self.rejections: dict[str, int] = {}
        self._keyholder: deque[ToKeyholder] = deque()
        self._done: deque[RoundRecord] = deque()

    state = property(lambda self: self.engine.state)
    step = property(lambda self: self.engine.step)
    waiting = property(lambda self: self.engine.waiting)
    current = property(lambda self: self.engine.current)
    bases = property(lambda self: self.engine.cohorts.bases)
    finished = property(lambda self: self.engine.finished)

    @property
    def context(self) -> bytes | None:
        return self.engine.context

    # ---- effects ------------------------------------------------------------------------------------------
    def _apply(self) -> list[ModelReply]:
        """Carry out the engine's effects (under the lock); model replies are returned to the check-in."""
        replies = []
        for eff in self.engine.drain():
            self._effect(eff, replies)
        self.cond.notify_all()
        return replies

    def _effect(self, eff: Effect, replies: list[ModelReply]) -> None:
        if isinstance(eff, Persist):
            self._save()
        elif isinstance(eff, Task):  # the header, then the round's model bytes, made once for every member
            body = b"" if eff.model is None else self._model_body(eff.round_id, eff.model)
            heads, releases = proofs_out(eff.header.get("proofs", []))  # the releases travel before the model
            header = {**eff.header, "proofs": heads} if "proofs" in eff.header else eff.header
            self.tasks[eff.cid] = (eff.round_id, (pack(header, b""), *releases, body))
        elif isinstance(eff, ModelReply):
            replies.append(eff)
        elif isinstance(eff, ToKeyholder):
            self._keyholder.append(eff)
        elif isinstance(eff, RoundDone):
            self._done.append(eff.record)

    def _model_body(self, round_id: int, model: Any) -> bytes:
        if self._body[0] != (round_id, id(model)):
            self._body = ((round_id, id(model)), model_bytes(model))
        return self._body[1]

    def _call(self, fn, *args, **kw):
        """An engine event under the lock; its effects are carried out even when it refuses (raises)."""
        try:
            return fn(*args, **kw)
        finally:
            self._apply()

    # ---- handler side -------------------------------------------------------------------------------------
    def checkin(self, cid: int, weight: float, timeout: float, alive: Callable[[], bool] = lambda: True,
                privacy: list | None = None, report: str = "", identity: SigningIdentity | None = None,
                base: int | None = None, retire: str | None = None, verified: int | None = None,
                placement: dict | None = None) -> bytes | tuple[bytes, ...]:
        """Wait up to ``timeout`` s to be put in a cohort; the task envelope, or ``idle`` / ``finished`` (or, in
        asynchronous mode, ``model`` for a client whose ``base`` version is missing or too stale); a task or model
        comes as its pieces (header, the proofs' releases, the model bytes all members share:
        :func:`~.wire.split` streams them). ``privacy``
        is checkpointed before this returns (see :meth:`RoundEngine.checkin`)."""
        end = time.monotonic() + timeout
        with self.cond:
            self.tasks.pop(cid, None)  # a new check-in voids a task it never fetched
            try:
                waits = self.engine.checkin(cid, weight, time.monotonic(), base=base, identity=identity,
                                            privacy=privacy, report=report, retire=retire, verified=verified,
                                            placement=placement)
            finally:
                replies = self._apply()
            for r in replies:
                if r.cid == cid:
                    heads, releases = proofs_out(r.proofs)
                    reply = (pack({"type": "model", "version": r.version, "proofs": heads}), *releases,
                             model_bytes(r.model))
                    self.engine.count_sent(cid, sum(map(len, reply)))
                    return reply
            while waits:
                if cid in self.tasks:
                    round_id, task = self.tasks.pop(cid)
                    if self.engine.current is not None and self.engine.current.round_id == round_id:
                        self.engine.count_sent(cid, sum(map(len, task)))
                        return task
                if self.engine.finished:
                    break
                left = end - time.monotonic()
                if left <= 0 or not alive():
                    if self.engine.current is None or cid not in self.engine.current.cohort:
                        self.engine.withdraw(cid)
                    return pack({"type": "idle"})
                self.cond.wait(min(left, 0.5))
            self.engine.withdraw(cid)
            return pack({"type": "finished", "round": self.engine.state.round})

    def send(self, cid: int, round_id: int, payload: bytes, privacy: list | None = None, report: str = "") -> None:
        """Deliver one message from client ``cid`` to the open round's role (raises a named error to refuse);
        a privacy report riding on it is composed first (durable before the answer)."""
        with self.cond:
            if privacy:
                self._call(self.engine.report, cid, privacy, report)
            self._call(self.engine.deliver, cid, round_id, payload, time.monotonic())

    def receive(self, cid: int, round_id: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bytes:
        """The next message for ``cid`` in round ``round_id``, or ``end`` once the round closed, or ``idle``."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                rnd = self.engine.round_for(cid, round_id)
                if rnd is None:
                    return pack({"type": "end", "status": self.engine.outcomes[round_id]})
                if rnd.mail[cid]:
                    return pack({"type": "message", "round_id": round_id}, rnd.mail[cid].popleft())
                if rnd.status != "open":
                    return pack({"type": "end", "status": rnd.status, "reason": rnd.reason})
                left = end - time.monotonic()
                if left <= 0 or not alive():
                    return pack({"type": "idle"})
                self.cond.wait(min(left, 0.5))

    def certificates(self, cid: int, round_id: int, ids: list[int] | None) -> bytes:
        """For member ``cid`` of the open round: the signing certificates ``{id: pem}`` it names for ``ids``, or
        with ``ids`` None the fingerprints ``{id: fingerprint}`` of all of them."""
        with self.cond:
            return self.engine.certificates(cid, round_id, ids)

    def note_rejection(self, exc: SecAggError) -> None:
        """Count a refused request by error name (the service logs it); reported by :meth:`status`."""
        with self.cond:
            name = type(exc).__name__
            self.rejections[name] = self.rejections.get(name, 0) + 1

    def stop(self) -> None:
        with self.cond:
            self.engine.stop()
            self.cond.notify_all()

    # ---- driver side --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Tick the engine until ``policy.rounds`` are applied (or :meth:`stop`); aborted attempts are retried."""
        while True:
            with self.cond:
                try:
                    self._call(self.engine.tick, time.monotonic())
                except Exception as exc:  # a broken deployment (bad scheme setup): stop loudly, never hang
                    log.exception("the round engine failed; the aggregator stops")
                    self.failure = exc
                    self.engine.stop()
                    self.cond.notify_all()
                    return
                work, done = list(self._keyholder), list(self._done)
                self._keyholder.clear()
                self._done.clear()
                if not work and not done:
                    if self.engine.finished and self.engine.current is None:
                        self.cond.notify_all()
                        return
                    deadline = self.engine.next_deadline(time.monotonic())
                    wait = 0.2 if deadline is None else deadline - time.monotonic()
                    self.cond.wait(min(max(wait, 0.01), 0.2))
                    continue
            for item in work:
                self._finalize(item)
            for record in done:
                if record.status != "done":
                    self._refresh_context(record.round_id)
                if self.on_round is not None:
                    self.on_round(record)

    def _finalize(self, item: ToKeyholder) -> None:
        try:
            outs = self.finalize(item.round_id, item.payload)  # type: ignore[misc]
        except Exception as exc:
            with self.cond:
                self._call(self.engine.keyholder_failed, item.round_id, as_secagg(exc), time.monotonic())
            return
        with self.cond:
            self._call(self.engine.keyholder_reply, item.round_id, outs, time.monotonic())

    def _refresh_context(self, round_id: int) -> None:
        """After round ``round_id`` failed: re-fetch the key holder's public context (without the lock)."""
        if self.refresh is None:
            return
        try:
            fresh = self.refresh()
        except SecAggError as exc:
            log.warning("round id %d: key holder unavailable (%s: %s); its context is re-fetched after the next "
                        "failure", round_id, type(exc).__name__, exc)
            return
        with self.cond:
            if fresh != self.engine.context:
                log.warning("key holder serves a new public key; the next round uses it (round id %d failed)",
                            round_id)
                self.engine.context = fresh

    def save(self) -> None:
        """Checkpoint now (the engine also asks for it after every applied round)."""
        with self.cond:
            self._save()

    def _save(self) -> None:
        if self.checkpoint_path is not None:
            checkpoint.save(self.checkpoint_path, self.engine.state)

    def status(self) -> dict[str, Any]:
        with self.cond:
            return self.engine.status() | {"rejections": dict(self.rejections)}
