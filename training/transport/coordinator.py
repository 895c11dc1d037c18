"""The aggregator's round engine, free of gRPC: check-in, cohort choice, routing, stage deadlines, apply, checkpoint.

Threads: gRPC handlers call :meth:`Coordinator.checkin`, :meth:`send` and :meth:`receive`; one driver thread runs
:meth:`run`. All state sits behind one condition variable, so the (not thread-safe) secagg role sees one call at
a time. Invariants:

* a message reaches the role only if its round id is the open round's and its sender (the certificate identity)
  is in that round's cohort; anything else raises a named ``SecAggError`` and changes nothing;
* a stage that makes no progress for ``stage_timeout`` seconds (the first stage: plus ``train_timeout``, the
  clients' local training) is closed (``close_stage``): silent or crashed
  clients become dropouts; if too few survive the round is aborted and retried with a fresh cohort and round id;
* the global model changes only after a round's result is validated, and the new model, the round counter and the
  strategy's server state (``step.state_dict()``, e.g. Adam's moments) are checkpointed together before any
  client is told the round ended; a server step that fails leaves the strategy's state as it was;
* a round's public strategy terms (:mod:`.step`) are fixed when it opens, sent in its task, and used for its
  server step, so clients' encoding and the server's apply always agree;
* buffered asynchronous strategies (``step.buffer_size`` = K): a client without a trained update is sent the
  current model and its version at once (``model`` reply) and trains on it; it checks in again with that
  ``base`` version, and the first K such arrivals (in order) form one secure cohort, weighted publicly by their
  staleness. An update staler than the strategy's ``max_staleness`` is answered with the current model instead;
* the global model is kept in float64 and sent to clients as little-endian float32 (what they train in); a model
  that float32 cannot hold finitely is never applied;
* a signed masking task names the cohort's signing certificates by a digest of their fingerprints;
  :meth:`certificates` serves the fingerprints and certificates themselves, to that round's members only.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from secagg.errors import MalformedMessageError, SecAggError, StageError, UnknownClientError, WrongRoundError
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, Outbound
from training.transport import checkpoint
from training.transport.certs import SigningIdentity
from training.transport.checkpoint import ServerState
from training.transport.rounds import Round, RoundPolicy, RoundRecord
from training.transport.schemes import Scheme
from training.transport.step import StrategyStep
from training.transport.wire import model_bytes, pack

__all__ = ["RoundPolicy", "Coordinator", "RoundRecord"]

log = logging.getLogger("training.transport.aggregator")
Finalize = Callable[[int, bytes], list[Outbound]]


def _as_secagg(exc: Exception) -> SecAggError:
    if isinstance(exc, SecAggError):
        return exc
    log.error("round failed on an unexpected error", exc_info=exc)
    return StageError(f"internal error: {type(exc).__name__}: {exc}")


class Coordinator:
    """Runs ``policy.rounds`` rounds of ``scheme`` over whoever checks in; see the module invariants.

    ``step`` is the server half of the strategy (default: FedAvg with server learning rate 1); its state is
    restored from ``state.strategy`` (a resumed checkpoint). ``refresh`` re-fetches the key holder's public
    context after every aborted round: a key holder that restarted with fresh keys refuses aggregates made under
    the old one (:class:`~.wire.StaleKeyError`), and clients cannot get a context the round names; the next round
    is planned under the context it serves now."""

    def __init__(self, scheme: Scheme, state: ServerState, policy: RoundPolicy, *,
                 checkpoint_path: str | None = None, context: bytes | None = None,
                 finalize: Finalize | None = None, step: StrategyStep | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 ledger_budget: tuple[float, float] = (1e9, 1e-5),
                 refresh: Callable[[], bytes] | None = None) -> None:
        if scheme.needs_keyholder and (finalize is None or context is None):
            raise ValueError(f"scheme {scheme.name} needs a key holder (context and finalize)")
        self.scheme, self.state, self.policy = scheme, state, policy
        self.checkpoint_path, self.context, self.finalize = checkpoint_path, context, finalize
        self.step, self.on_round, self.refresh = step or StrategyStep(), on_round, refresh
        self.step.load_state_dict(state.strategy)
        self.step.start(state.model, state.round)
        self.cond = threading.Condition()
        self.waiting: dict[int, float] = {}
        self.waiting_since: float | None = None
        self.assigned: dict[int, int] = {}
        self.current: Round | None = None
        self.outcomes: dict[int, str] = {}
        self.stopping = False
        self.failure: BaseException | None = None
        self.rejections: dict[str, int] = {}
        self.identities: dict[int, SigningIdentity] = {}
        self.bases: dict[int, tuple[int, float]] = {}  # async: client -> (base version, waiting since)
        self.model_bytes = 0  # async: model replies sent since the last round opened
        self.ledger_budget = ledger_budget

    @property
    def finished(self) -> bool:
        return self.state.round >= self.policy.rounds or self.stopping

    # ---- handler side -------------------------------------------------------------------------------------
    def checkin(self, cid: int, weight: float, timeout: float, alive: Callable[[], bool] = lambda: True,
                privacy: list | None = None, report: str = "", identity: SigningIdentity | None = None,
                base: int | None = None) -> bytes:
        """Wait up to ``timeout`` s to be put in a cohort; the task envelope, or ``idle`` / ``finished`` (or, in
        asynchronous mode, ``model`` for a client whose ``base`` version is missing or too stale).

        ``privacy``: the DP events (``PrivacyEvent.to_dict()``) of the client's training since its last check-in,
        under the client-chosen ``report`` id; they are composed into its ledger in ``state.ledgers`` and
        checkpointed before this call returns. A report whose id equals the client's last recorded one is a
        re-send (the reply was lost) and is not composed again. ``identity``: the client's signing certificate,
        already verified against the CA by the service (named by fingerprint in the tasks of signed rounds).
        """
        if not (np.isfinite(weight) and weight > 0):
            raise MalformedMessageError(f"weight must be positive and finite, got {weight!r}")
        if privacy and not 8 <= len(report) <= 64:
            raise MalformedMessageError("a privacy report needs a report id of 8 to 64 characters")
        end = time.monotonic() + timeout
        with self.cond:
            if privacy and self.state.reports.get(str(cid)) != report:
                self.state.record_privacy(cid, privacy, report, self.ledger_budget)
                self._save()  # durable before the client is told, so an acknowledged report is never lost
            self.assigned.pop(cid, None)
            if identity is not None:
                self.identities[cid] = identity
            if self.step.buffer_size is not None:
                reply = self._admit(cid, base)
                if reply is not None:
                    return reply
            self.waiting[cid] = float(weight)
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            self.cond.notify_all()
            while True:
                if self.finished:
                    self.waiting.pop(cid, None)
                    return pack({"type": "finished", "round": self.state.round})
                rnd = self.current
                if rnd is not None and rnd.status == "open" and self.assigned.get(cid) == rnd.round_id:
                    del self.assigned[cid]
                    rnd.task_bytes += len(rnd.task)
                    return rnd.task
                left = end - time.monotonic()
                if left <= 0 or not alive():
                    self.waiting.pop(cid, None)
                    return pack({"type": "idle"})
                self.cond.wait(min(left, 0.5))

    def _admit(self, cid: int, base: int | None) -> bytes | None:
        """Asynchronous mode: the current model for a client with nothing (fresh enough) to contribute, else None
        after noting the version its update was trained from (and since when it waits with it)."""
        version = self.state.round
        if self.finished:
            return pack({"type": "finished", "round": version})
        if base is not None and not 0 <= base <= version:
            raise MalformedMessageError(f"base version {base} is not in [0, {version}]")
        if base is None or not self.step.fresh_enough(base, version):
            self.bases.pop(cid, None)
            self.waiting.pop(cid, None)  # an earlier check-in of this client (e.g. before it restarted) is void
            reply = pack({"type": "model", "version": version}, model_bytes(self.state.model))
            self.model_bytes += len(reply)  # counted as task bytes of the next round
            return reply
        if self.bases.get(cid, (None,))[0] != base:
            self.bases[cid] = (base, time.monotonic())
        return None

    def _round_for(self, cid: int, round_id: int) -> Round | None:
        rnd = self.current
        if rnd is not None and rnd.round_id == round_id:
            if cid not in rnd.cohort:
                raise UnknownClientError(f"client {cid} is not in the cohort of round {round_id}")
            return rnd
        if round_id in self.outcomes:
            return None
        raise WrongRoundError(f"round {round_id} is not open (current: "
                              f"{rnd.round_id if rnd else 'none'}, next: {self.state.next_round_id})")

    def send(self, cid: int, round_id: int, payload: bytes) -> None:
        """Deliver one message from client ``cid`` to the open round's role (raises a named error to refuse)."""
        with self.cond:
            rnd = self._round_for(cid, round_id)
            if rnd is None or rnd.status != "open":
                raise WrongRoundError(f"round {round_id} is already closed")
            try:
                outs = rnd.role.receive(cid, payload)
            except SecAggError:
                raise
            except Exception as exc:  # a role must never be crashed by bytes: report it as malformed input
                log.exception("role raised on input from client %d", cid)
                raise MalformedMessageError(f"message rejected: {type(exc).__name__}: {exc}") from exc
            rnd.bytes_up += len(payload)
            self._route(rnd, AGGREGATOR, outs)
            self.cond.notify_all()

    def receive(self, cid: int, round_id: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bytes:
        """The next message for ``cid`` in round ``round_id``, or ``end`` once the round closed, or ``idle``."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                rnd = self._round_for(cid, round_id)
                if rnd is None:
                    return pack({"type": "end", "status": self.outcomes[round_id]})
                if rnd.mail[cid]:
                    payload = rnd.mail[cid].popleft()
                    return pack({"type": "message", "round_id": round_id}, payload)
                if rnd.status != "open":
                    return pack({"type": "end", "status": rnd.status, "reason": rnd.reason})
                left = end - time.monotonic()
                if left <= 0 or not alive():
                    return pack({"type": "idle"})
                self.cond.wait(min(left, 0.5))

    def certificates(self, cid: int, round_id: int, ids: list[int] | None) -> bytes:
        """For member ``cid`` of the open round ``round_id``: the signing certificates it names for clients ``ids``
        as a JSON object ``{id: pem}`` (UnknownClientError for another id), or with ``ids`` None the fingerprints
        of all of them, ``{id: fingerprint}``."""
        with self.cond:
            rnd = self._round_for(cid, round_id)
            if rnd is None or rnd.status != "open":
                raise WrongRoundError(f"round {round_id} is already closed")
            return rnd.certificates(ids)

    def note_rejection(self, exc: SecAggError) -> None:
        """Count a refused request by error name (the service logs it); reported by :meth:`status`."""
        with self.cond:
            name = type(exc).__name__
            self.rejections[name] = self.rejections.get(name, 0) + 1

    def _route(self, rnd: Round, sender: int, outs: list[Outbound]) -> None:
        for out in outs:
            if out.to == KEYHOLDER:
                rnd.to_keyholder.append(out.payload)
            elif out.to in rnd.cohort:
                rnd.mail[out.to].append(out.payload)
                rnd.bytes_down += len(out.payload)
            else:
                log.error("role %d addressed a message to %d, outside round %d", sender, out.to, rnd.round_id)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    # ---- driver side --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run rounds until ``policy.rounds`` are applied (or :meth:`stop`); aborted attempts are retried."""
        while True:
            with self.cond:
                cohort = self._gather()
                if cohort is None:
                    self.cond.notify_all()
                    return
                try:
                    rnd = self._open(cohort)
                except SecAggError as exc:  # e.g. a threshold the cohort cannot meet: wait for more clients
                    log.error("cannot open a round with cohort %s: %s: %s", sorted(cohort), type(exc).__name__, exc)
                    for c, w in cohort.items():
                        self.waiting.setdefault(c, w)
                    self.waiting_since = time.monotonic()
                    self.cond.wait(max(self.policy.checkin_timeout, 0.5))
                    continue
                except Exception as exc:  # a broken deployment (bad scheme setup): stop loudly, never hang
                    log.exception("cannot open a round; the aggregator stops")
                    self.failure, self.stopping = exc, True
                    self.cond.notify_all()
                    return
            record = self._drive(rnd)
            if self.on_round is not None:
                self.on_round(record)

    def _gather(self) -> dict[int, float] | None:
        p = self.policy
        while not self.finished:
            if self.step.buffer_size is not None:  # no (fresh enough) update any more: its check-in ends idle
                for c in [c for c in self.waiting if c not in self.bases
                          or not self.step.fresh_enough(self.bases[c][0], self.state.round)]:
                    self.waiting.pop(c)
                    self.bases.pop(c, None)
            n = len(self.waiting)
            waited = time.monotonic() - (self.waiting_since or time.monotonic())
            if n >= p.cohort_size or (n >= p.min_clients and waited >= p.checkin_timeout):
                if self.step.buffer_size is None:
                    chosen = secrets.SystemRandom().sample(sorted(self.waiting), min(n, p.cohort_size))
                else:  # a buffer: the first arrivals with a trained update
                    chosen = sorted(self.waiting, key=lambda c: self.bases[c][1])[:p.cohort_size]
                cohort = {c: self.waiting.pop(c) for c in chosen}
                self.waiting_since = time.monotonic() if self.waiting else None
                return cohort
            self.cond.wait(0.2)
        return None

    def _open(self, cohort: dict[int, float]) -> Round:
        round_id = self.state.next_round_id
        self.state.next_round_id += 1
        self._save()  # write-ahead: this round id is never handed out again, even after a crash
        ids = sorted(cohort)
        known = {c: self.identities[c] for c in ids if c in self.identities}
        version, body = self.state.round, model_bytes(self.state.model)
        if self.step.buffer_size is None:
            terms = self.step.terms(self.state.model, version)
        else:  # members trained already: public staleness weights replace the checked-in ones, no model is sent
            bases = {c: self.bases[c][0] for c in ids}
            terms, body = self.step.terms(self.state.model, version, bases), b""
            cohort = self.step.public_weights(bases, version)
        if not self.step.private_weights:  # distributed-DP shares are scaled to the cohort's largest public weight
            terms["max_weight"] = float(max(cohort.values()))
        params, role = self.scheme.plan(round_id, ids, cohort, int(self.state.model.size), self.context, known,
                                        private_bound=terms.get("weight_bound"))
        params["strategy"] = terms
        for c in ids:
            self.bases.pop(c, None)
        header = {"type": "task", "round_id": round_id, "round": version, "scheme": self.scheme.name,
                  "params": params}
        task = pack(header, body)
        rnd = Round(round_id, self.state.round, frozenset(ids), role, task, {c: deque() for c in ids}, terms,
                    known if "identities" in params else {})
        rnd.task_bytes, self.model_bytes = self.model_bytes, 0
        self.current = rnd
        for c in ids:
            self.assigned[c] = round_id
        log.info("round %d (id %d) opened with cohort %s", rnd.round, round_id, ids)
        self.cond.notify_all()
        return rnd

    def _drive(self, rnd: Round) -> RoundRecord:
        result, error = None, None
        try:
            result = self._pump(rnd)
        except Exception as exc:
            error = _as_secagg(exc)
            self._refresh_context(rnd.round_id)  # a new key at the key holder fails rounds in several ways
        with self.cond:
            if result is not None:
                try:
                    self._commit(rnd, result)
                except Exception as exc:
                    error = _as_secagg(exc)
            rnd.status = "done" if error is None else "aborted"
            rnd.reason = "" if error is None else f"{type(error).__name__}: {error}"
            self.outcomes[rnd.round_id] = rnd.status
            if len(self.outcomes) > 256:
                self.outcomes.pop(min(self.outcomes))
            self.current = None
            self.cond.notify_all()
        if error is not None:
            log.warning("round %d (id %d) aborted: %s", rnd.round, rnd.round_id, rnd.reason)
        return RoundRecord(rnd.round, rnd.round_id, tuple(sorted(rnd.cohort)), rnd.status,
                           time.monotonic() - rnd.started, rnd.bytes_up, rnd.bytes_down, rnd.task_bytes,
                           rnd.keyholder_bytes, result if error is None else None, rnd.reason, rnd.terms, rnd.cert_bytes)

    def _pump(self, rnd: Round) -> AggregateResult:
        """Advance ``rnd`` until its role is done: forward to the key holder, close overdue stages."""
        closes = 0
        with self.cond:
            stage, since = rnd.role.stage, time.monotonic()
            extra = self.policy.train_timeout
            while not rnd.role.done:
                if self.stopping:
                    raise StageError("aggregator is shutting down")
                if rnd.to_keyholder:
                    payload = rnd.to_keyholder.popleft()
                    self.cond.release()
                    try:
                        outs = self.finalize(rnd.round_id, payload)  # type: ignore[misc]
                    finally:
                        self.cond.acquire()
                    rnd.keyholder_bytes += len(payload) + sum(len(o.payload) for o in outs)
                    for out in outs:
                        if out.to == AGGREGATOR:
                            self._route(rnd, KEYHOLDER, rnd.role.receive(KEYHOLDER, out.payload))
                    continue
                if rnd.role.stage != stage:
                    stage, since, closes, extra = rnd.role.stage, time.monotonic(), 0, 0.0
                    continue
                left = since + self.policy.stage_timeout + extra - time.monotonic()
                if left <= 0:
                    closes += 1
                    if closes > self.policy.max_closes:
                        raise StageError(f"stage {stage!r} made no progress after {closes - 1} deadlines")
                    log.info("round id %d: deadline of stage %r passed; closing it", rnd.round_id, stage)
                    self._route(rnd, AGGREGATOR, rnd.role.close_stage())
                    since, extra = time.monotonic(), 0.0
                    continue
                self.cond.wait(min(left, 0.5))
            return rnd.role.result()

    def _refresh_context(self, round_id: int) -> None:
        """After round ``round_id`` failed (the key holder refused its aggregate as made under a key it does not
        hold, failed, or clients could not get the context the round named): re-fetch the key holder's public
        context (without the lock), so the next round is planned under the key it holds now."""
        if self.refresh is None:
            return
        try:
            fresh = self.refresh()
        except SecAggError as exc:
            log.warning("round id %d: key holder unavailable (%s: %s); its context is re-fetched after the next "
                        "failure", round_id, type(exc).__name__, exc)
            return
        if fresh != self.context:
            log.warning("key holder serves a new public key; round id %d is aborted and the next round uses it",
                        round_id)
            self.context = fresh

    def _commit(self, rnd: Round, result: AggregateResult) -> None:
        mean = np.asarray(result.mean, dtype=np.float64)
        if mean.shape != self.state.model.shape or not np.isfinite(mean).all():
            raise MalformedMessageError(f"aggregate of shape {mean.shape} is not a finite model-sized vector")
        before = self.step.state_dict()
        try:
            new = np.asarray(self.step.apply(self.state.model, result, rnd.round, rnd.terms), dtype=np.float64)
            if new.shape != self.state.model.shape or not np.isfinite(new.astype(np.float32)).all():
                raise MalformedMessageError("the updated model is not finite in float32")
        except Exception:
            self.step.load_state_dict(before)  # the strategy's state stays that of the checkpointed model
            raise
        self.state.model = new
        self.state.round = rnd.round + 1
        self.state.strategy = self.step.state_dict()
        self._save()
        log.info("round %d (id %d) applied: %d contributors, %d dropped", rnd.round, rnd.round_id,
                 len(result.contributors), len(result.dropped))

    def save(self) -> None:
        """Checkpoint now (the driver also does after every applied round)."""
        with self.cond:
            self._save()

    def _save(self) -> None:
        if self.checkpoint_path is not None:
            checkpoint.save(self.checkpoint_path, self.state)

    def status(self) -> dict[str, Any]:
        with self.cond:
            return {"round": self.state.round, "next_round_id": self.state.next_round_id,
                    "waiting": len(self.waiting), "rejections": dict(self.rejections),
                    "open": None if self.current is None else self.current.round_id}
