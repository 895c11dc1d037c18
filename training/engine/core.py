"""The sans-I/O round engine: events in, effects out. No threads, clocks, sockets, gRPC or Flower in here.

Events: :meth:`RoundEngine.checkin`, :meth:`withdraw`, :meth:`deliver` (a client's payload), :meth:`keyholder_reply`
/ :meth:`keyholder_failed`, :meth:`tick` (the driver's clock: real or simulated).
Effects (:meth:`drain`): :class:`Task` (a cohort member's round), :class:`ModelReply` (asynchronous: train on
this version), :class:`Mail` (for a client), :class:`ToKeyholder`, :class:`Persist` (write the checkpoint now,
before anything else is sent), :class:`RoundDone` (the round's one record), :class:`OpenFailed` (waits again).

Invariants (every driver inherits them):

* a message reaches the aggregator role only if its round id is the open round's and its sender is in that round's
  cohort; anything else raises a named ``SecAggError`` and changes nothing;
* a stage without progress for ``stage_timeout`` (the first: plus ``train_timeout``) is closed: silent clients
  become dropouts; after ``max_closes`` fruitless closes, or too few survivors, the round is aborted (the next
  gets a fresh cohort and round id); no stage is closed while the key holder works on the round; after
  ``max_aborts`` aborted attempts in a row the federation stops, :attr:`~RoundEngine.stop_reason` naming the last;
* round ids are written ahead (a :class:`Persist` before the round's tasks), so none is ever reused;
* the model changes only after the result is validated; model, round counter and strategy state are persisted
  together before :class:`RoundDone`; a failed server step leaves the strategy's state as it was;
* a round's public strategy terms are fixed when it opens, sent in its task (bound into what each client signs
  or seals: :func:`secagg.terms.terms_digest`), and used for its server step;
* every applied step leaves a proof (its parameters and the key holder's signed release, :mod:`.audit`) in the
  persisted state; each model sent to a client carries the proofs since the version it last verified; the state
  keeps (at most ``MAX_PROOFS``) the proofs some known client still needs, and every client's verified version;
* privacy reports are composed into the client's ledger once (re-sent ids ignored), persisted before the answer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from secagg.errors import (ConfigurationError, MalformedMessageError, SecAggError, StageError, UnknownClientError,
                           WrongRoundError)
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, Outbound
from training.engine.audit import MAX_PROOFS, proof
from training.engine.cohort import Cohorts
from training.engine.metrics import placement_report
from training.engine.effects import Effect, Mail, ModelReply, OpenFailed, Persist, RoundDone, Task, ToKeyholder
from training.engine.roles import Identity, Scheme
from training.engine.rounds import Round, RoundPolicy
from training.engine.state import ServerState
from training.engine.terms import StrategyStep

__all__ = ["RoundEngine", "Task", "ModelReply", "Mail", "ToKeyholder", "Persist", "RoundDone", "OpenFailed",
           "Effect"]

log = logging.getLogger("training.engine")
_BLOCK = 1 << 20  # values per block of a model-sized check (no model-sized temporaries)


def _finite(x: np.ndarray, divisor: float = 1.0, dtype: type = np.float64) -> bool:
    """Whether every ``x[i] / divisor``, in ``dtype``, is finite (checked block by block)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return all(np.isfinite((x[lo:lo + _BLOCK] / np.float64(divisor)).astype(dtype, copy=False)).all()
                   for lo in range(0, x.size, _BLOCK))


def as_secagg(exc: Exception) -> SecAggError:
    if isinstance(exc, SecAggError):
        return exc
    log.error("round failed on an unexpected error", exc_info=exc)
    return StageError(f"internal error: {type(exc).__name__}: {exc}")


class RoundEngine:
    """Runs ``policy.rounds`` rounds of ``scheme`` over whoever checks in; see the module invariants.

    ``step`` is the server half of the strategy (default FedAvg); its state is restored from ``state.strategy``.
    ``context`` is the key holder's public context (CKKS, packed; ``public``: the same, parsed); a driver that
    re-fetched it after a failure assigns the new one to :attr:`context` (and :attr:`public`)."""

    def __init__(self, scheme: Scheme, state: ServerState, policy: RoundPolicy, *, step: StrategyStep | None = None,
                 context: bytes | None = None, public: object = None,
                 ledger_budget: tuple[float | None, float] = (None, 1e-5)) -> None:
        if scheme.needs_keyholder and context is None:
            raise ConfigurationError(f"scheme {scheme.name} needs the key holder's public context")
        self.scheme, self.state, self.policy = scheme, state, policy
        self.context, self.public = context, public
        self.step = step or StrategyStep()
        self.step.load_state_dict(state.strategy)
        self.step.start(state.model, state.round)
        self.cohorts = Cohorts(self.step, policy)
        self.ledger_budget = ledger_budget
        self.current: Round | None = None
        self.outcomes: dict[int, str] = {}
        self.identities: dict[int, Identity] = {}
        self.stopping = False
        self.stop_reason: str | None = None
        self.retired: dict[int, str] = {}  # clients that withdrew for good, and why (their own words)
        self.verified = {int(c): int(v) for c, v in state.verified.items()}  # each client's last verified version
        self.placements: dict[int, tuple[float, str]] = {}  # client -> (exposed ε, adversary) it reported
        self._retry_at: float | None = None  # a cohort failed to open: wait until then
        self.aborts = 0  # aborted attempts since the last applied round
        self._pending_task_bytes = 0  # async model replies since the last round opened
        self._out: list[Effect] = []

    # ---- state ------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state.round >= self.policy.rounds or self.stopping

    @property
    def waiting(self) -> dict[int, float]:
        return self.cohorts.waiting

    def drain(self) -> list[Effect]:
        """The effects produced since the last call, in order (the driver carries them out in that order)."""
        out, self._out = self._out, []
        return out

    def stop(self) -> None:
        self.stopping = True

    def status(self) -> dict[str, Any]:
        return {"round": self.state.round, "next_round_id": self.state.next_round_id,
                "waiting": len(self.cohorts.waiting), "open": None if self.current is None else self.current.round_id}

    def next_deadline(self, now: float) -> float | None:
        """The driver's clock value at which :meth:`tick` has something to do (None: only after another event)."""
        rnd = self.current
        if rnd is not None:
            return None if rnd.keyholder_busy else rnd.stage_since + self.policy.stage_timeout + rnd.extra
        due = None if self.finished else self.cohorts.due(now)
        return None if due is None else max(due, self._retry_at if self._retry_at is not None else due)

    # ---- events -----------------------------------------------------------------------------------------
    def checkin(self, cid: int, weight: float, now: float, *, base: int | None = None,
                identity: Identity | None = None, privacy: list | None = None, report: str = "",
                retire: str | None = None, verified: int | None = None, placement: dict | None = None) -> bool:
        """Client ``cid`` asks for work; True when it now waits for a cohort. False when the federation is finished
        or (asynchronous) it is sent the current model (a :class:`ModelReply`). ``privacy``: the DP events of its
        training since its last check-in under the report id ``report`` (composed into its ledger once).
        ``retire``: the client withdraws for good (its reason; e.g. its budget cannot afford a round).
        ``verified``: the model version the client last verified (its next model carries proofs from there).
        ``placement``: its distributed-placement report (:func:`~.metrics.placement_report`; metrics only)."""
        if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight > 0):
            raise MalformedMessageError(f"weight must be positive and finite, got {weight!r}")
        placed = None if placement is None else placement_report(placement)  # checked before anything changes
        self.report(cid, privacy, report)
        if placed is not None:
            self.placements[cid] = placed
        if isinstance(verified, int) and not isinstance(verified, bool) and 0 <= verified <= self.state.round:
            self.verified[cid] = self.state.verified[str(cid)] = verified
        if identity is not None:
            self.identities[cid] = identity
        if retire is not None:
            self.retire(cid, retire)
            return False
        self.retired.pop(cid, None)
        if self.finished:
            self.cohorts.withdraw(cid)
            return False
        if not self.cohorts.admit(cid, float(weight), base, self.state.round, now):
            self._out.append(ModelReply(cid, self.state.round, self.state.model, self.proofs_for(cid)))
            self._sent_model(cid)
            return False
        return True

    def _sent_model(self, cid: int) -> None:
        """A model of the current version goes to ``cid``: a client the engine knows no verified version of
        anchors there, so the proofs it will need start at this version (until it reports its own)."""
        if cid not in self.verified:
            self.verified[cid] = self.state.verified[str(cid)] = self.state.round

    def proofs_for(self, cid: int) -> list[dict]:
        """Proofs of the server steps since the version client ``cid`` last verified (:mod:`.audit`)."""
        since = self.verified.get(cid)
        return [] if since is None else [p for p in self.state.proofs if p["round"] >= since]

    def report(self, cid: int, privacy: list | None, report: str) -> None:
        """Compose client ``cid``'s privacy report (the DP events of its training under the id ``report``) into
        its ledger once, durable (a :class:`Persist`) before the client is answered; sent at check-in and with
        a round's first message, so the round's metrics already count its training."""
        if privacy and not (isinstance(report, str) and 8 <= len(report) <= 64):
            raise MalformedMessageError("a privacy report needs a report id of 8 to 64 characters")
        if privacy and self.state.reports.get(str(cid)) != report:
            self.state.record_privacy(cid, privacy, report, self.ledger_budget)
            self._out.append(Persist(self.state))

    def withdraw(self, cid: int) -> None:
        """A waiting client left (its check-in timed out or its connection closed)."""
        self.cohorts.withdraw(cid)

    def retire(self, cid: int, reason: str) -> None:
        """Client ``cid`` withdraws for good (``reason``: its own words, at most 500 characters kept). The
        federation stops once fewer than ``policy.min_clients`` of its ``policy.clients`` can go on."""
        if not isinstance(reason, str):
            raise MalformedMessageError("a retirement states its reason as a string")
        self.cohorts.withdraw(cid)
        self.retired[cid] = reason[:500]
        log.warning("client %d withdrew: %s", cid, reason[:500])
        total = self.policy.clients
        if total is not None and total - len(self.retired) < self.policy.min_clients and not self.finished:
            self.stop_reason = (f"{total - len(self.retired)} of {total} clients can go on, a round needs "
                                f"{self.policy.min_clients}; withdrawn: "
                                + "; ".join(f"client {c}: {r}" for c, r in sorted(self.retired.items())))
            self.stopping = True

    def count_sent(self, cid: int, nbytes: int) -> None:
        """The driver sent ``cid`` a task envelope or model reply of ``nbytes`` (counted as the next round's task
        bytes when no round is open)."""
        rnd = self.current
        if rnd is not None and cid in rnd.cohort:
            rnd.task_bytes += nbytes
        else:
            self._pending_task_bytes += nbytes

    def round_for(self, cid: int, round_id: int) -> Round | None:
        """The open round ``round_id`` if ``cid`` is a member; None if it ended (see :attr:`outcomes`)."""
        rnd = self.current
        if rnd is not None and rnd.round_id == round_id:
            if cid not in rnd.cohort:
                raise UnknownClientError(f"client {cid} is not in the cohort of round {round_id}")
            return rnd
        if round_id in self.outcomes:
            return None
        raise WrongRoundError(f"round {round_id} is not open (current: "
                              f"{rnd.round_id if rnd else 'none'}, next: {self.state.next_round_id})")

    def deliver(self, cid: int, round_id: int, payload: bytes, now: float) -> None:
        """One message from client ``cid`` to the open round's role (a named error refuses it, changing nothing)."""
        rnd = self.round_for(cid, round_id)
        if rnd is None or rnd.status != "open":
            raise WrongRoundError(f"round {round_id} is already closed")
        try:
            outs = rnd.role.receive(cid, payload)
        except SecAggError:
            if getattr(rnd.role, "stage", "") == "failed":
                self._end(rnd, now, None, StageError("the round failed on a client's message"))
            raise
        except Exception as exc:  # a role must never be crashed by bytes: report it as malformed input
            log.exception("role raised on input from client %d", cid)
            raise MalformedMessageError(f"message rejected: {type(exc).__name__}: {exc}") from exc
        rnd.up[cid] += len(payload)
        self._advance(rnd, outs, now)

    def keyholder_reply(self, round_id: int, outs: list[Outbound], now: float) -> None:
        """The key holder's answer to the round's :class:`ToKeyholder` payload."""
        rnd = self.current
        if rnd is None or rnd.round_id != round_id:
            return  # the round ended meanwhile (stopped): nothing to apply
        rnd.keyholder_busy = False
        rnd.keyholder_bytes += sum(len(o.payload) for o in outs)
        try:
            for out in outs:
                if out.to == AGGREGATOR:
                    self._advance(rnd, rnd.role.receive(KEYHOLDER, out.payload), now)
        except Exception as exc:
            self._end(rnd, now, None, exc)

    def keyholder_failed(self, round_id: int, exc: Exception, now: float) -> None:
        rnd = self.current
        if rnd is not None and rnd.round_id == round_id:
            self._end(rnd, now, None, exc)

    def abort(self, now: float, error: Exception) -> None:
        """The driver gives up on the open round (e.g. a local client failed in-process): it ends aborted."""
        if self.current is not None:
            self._end(self.current, now, None, error)

    def tick(self, now: float) -> None:
        """Time passed: close an overdue stage, or open a round whose cohort is due."""
        rnd = self.current
        if rnd is not None:
            if self.stopping:
                self._end(rnd, now, None, StageError("aggregator is shutting down"))
            elif not rnd.keyholder_busy and now >= rnd.stage_since + self.policy.stage_timeout + rnd.extra:
                rnd.closes += 1
                if rnd.closes > self.policy.max_closes:
                    self._end(rnd, now, None, StageError(f"stage {rnd.stage!r} made no progress after "
                                                         f"{rnd.closes - 1} deadlines"))
                    return
                log.info("round id %d: deadline of stage %r passed; closing it", rnd.round_id, rnd.stage)
                rnd.stage_since, rnd.extra = now, 0.0
                try:
                    self._advance(rnd, rnd.role.close_stage(), now)
                except Exception as exc:
                    self._end(rnd, now, None, exc)
            return
        if self.finished or (self._retry_at is not None and now < self._retry_at):
            return
        chosen = self.cohorts.choose(self.state.round, now)
        if chosen is not None:
            self._open(*chosen, now)

    def certificates(self, cid: int, round_id: int, ids: list[int] | None) -> bytes:
        rnd = self.round_for(cid, round_id)
        if rnd is None or rnd.status != "open":
            raise WrongRoundError(f"round {round_id} is already closed")
        return rnd.certificates(ids)

    # ---- internals --------------------------------------------------------------------------------------
    def _open(self, cohort: dict[int, float], bases: Mapping[int, int] | None, now: float) -> None:
        ids = sorted(cohort)
        round_id = self.state.next_round_id
        self.state.next_round_id += 1
        self._out.append(Persist(self.state))  # write-ahead: this round id is never handed out again
        known = {c: self.identities[c] for c in ids if c in self.identities}
        version = self.state.round
        try:
            terms = self.step.terms(self.state.model, version, bases)
            terms["cohort_size"] = len(ids)
            if not self.step.private_weights:  # distributed-DP shares are scaled to the largest public weight
                terms["max_weight"] = float(max(cohort.values()))
            params, role = self.scheme.plan(round_id, ids, cohort, int(self.state.model.size), self.context, known,
                                            private_bound=terms.get("weight_bound"), public=self.public,
                                            terms=terms)
        except SecAggError as exc:  # e.g. a threshold the cohort cannot meet: wait for more clients
            log.error("cannot open a round with cohort %s: %s: %s", ids, type(exc).__name__, exc)
            self.cohorts.put_back(cohort, now)
            self._retry_at = now + max(self.policy.checkin_timeout, 0.5)
            self._out.append(OpenFailed(tuple(ids), exc))
            return
        self._retry_at = None
        self.cohorts.taken(ids)
        header = {"type": "task", "round_id": round_id, "round": version, "scheme": self.scheme.name,
                  "params": params}
        rnd = Round(round_id, version, frozenset(ids), role, header, {c: deque() for c in ids}, terms,
                    known if "identities" in params else {}, started=now, stage=role.stage, stage_since=now,
                    extra=self.policy.train_timeout)
        rnd.task_bytes, self._pending_task_bytes = self._pending_task_bytes, 0
        self.current = rnd
        log.info("round %d (id %d) opened with cohort %s", version, round_id, ids)
        model = None if bases is not None else self.state.model
        for c in ids:
            self._out.append(Task(c, round_id, header if model is None else {**header, "proofs": self.proofs_for(c)},
                                  model))
            if model is not None:
                self._sent_model(c)

    def _advance(self, rnd: Round, outs: list[Outbound], now: float) -> None:
        """Route the role's messages; note stage progress; finish the round once the role is done."""
        self._route(rnd, outs)
        if rnd.role.stage != rnd.stage:
            rnd.stage, rnd.stage_since, rnd.closes, rnd.extra = rnd.role.stage, now, 0, 0.0
        if rnd.role.done and rnd.status == "open":
            try:
                result = rnd.role.result()
                self.commit(rnd, result)
            except Exception as exc:
                self._end(rnd, now, None, exc)
            else:
                self._end(rnd, now, result, None)

    def _route(self, rnd: Round, outs: list[Outbound]) -> None:
        for out in outs:
            if out.to == KEYHOLDER:
                rnd.keyholder_busy = True
                rnd.keyholder_bytes += len(out.payload)
                self._out.append(ToKeyholder(rnd.round_id, out.payload))
            elif out.to in rnd.cohort:
                rnd.mail[out.to].append(out.payload)
                rnd.down[out.to] += len(out.payload)
                self._out.append(Mail(out.to, rnd.round_id, out.payload))
            else:
                log.error("the role addressed a message to %d, outside round %d", out.to, rnd.round_id)

    def commit(self, rnd: Round, result: AggregateResult) -> None:
        """Apply ``result`` as server step ``rnd.round`` (validated first; atomic with the strategy's state)."""
        total = np.asarray(result.weighted_sum)
        if total.shape != self.state.model.shape or not _finite(total, result.total_weight):
            raise MalformedMessageError(f"aggregate of shape {total.shape} is not a finite model-sized vector")
        before = self.step.state_dict()
        try:
            new = np.asarray(self.step.apply(self.state.model, result, rnd.round, rnd.terms), dtype=np.float64)
            if new.shape != self.state.model.shape or not _finite(new, 1.0, np.float32):
                raise MalformedMessageError("the updated model is not finite in float32")
        except Exception:
            self.step.load_state_dict(before)  # the strategy's state stays that of the persisted model
            raise
        self.state.model = new
        self.state.round = rnd.round + 1
        self.state.strategy = self.step.state_dict()
        step = proof(rnd.round, rnd.header["params"], getattr(rnd.role, "release", None))
        need = min(self.verified.values(), default=0)  # no client the engine knows needs an older step's proof
        self.state.proofs = [p for p in [*self.state.proofs, step][-MAX_PROOFS:] if p["round"] >= need]
        self._out.append(Persist(self.state))
        log.info("round %d (id %d) applied: %d contributors, %d dropped", rnd.round, rnd.round_id,
                 len(result.contributors), len(result.dropped))

    def _end(self, rnd: Round, now: float, result: AggregateResult | None, error: Exception | None) -> None:
        if rnd.status != "open":
            return
        err = None if error is None else as_secagg(error)
        rnd.status = "done" if err is None else "aborted"
        rnd.reason = "" if err is None else f"{type(err).__name__}: {err}"
        rnd.keyholder_busy = False
        self.outcomes[rnd.round_id] = rnd.status
        if len(self.outcomes) > 256:
            self.outcomes.pop(min(self.outcomes))
        self.current = None
        if err is not None:
            log.warning("round %d (id %d) aborted: %s", rnd.round, rnd.round_id, rnd.reason)
        self.aborts = 0 if err is None else self.aborts + 1
        bound = self.policy.max_aborts
        if bound is not None and self.aborts >= bound and not self.finished:
            self.stop_reason = f"{self.aborts} attempts in a row aborted; the last: {rnd.reason}"
            self.stopping = True
        self._out.append(RoundDone(rnd.record(now, result), err))
