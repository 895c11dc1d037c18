"""The in-process driver of the round engine: every party in one process, a FIFO pump, a simulated clock.

Parties and what each holds:

* client i: its data, its :class:`~training.workload.client_update.ClientUpdate` (delta, loss) and its contribution in the clear,
  made by the engine's one :func:`~training.engine.contribution.contribute` under the task's public terms; its
  own secagg role, built from the task's parameters (:mod:`training.engine.roles`);
* aggregator: the engine (:class:`~training.engine.RoundEngine`) with its role; it sees ciphertexts or masked
  vectors, then only Σ w_i x_i, Σ w_i;
* key holder (CKKS, packed): pad seeds and the aggregate, from :class:`~training.inprocess.secure_sum.SecureSum`.

Every message is ``bytes`` and passes through the engine exactly as over gRPC: the round logic (cohort, terms,
routing, stage deadlines, apply) is the engine's. The driver's clock is simulated: when no message is in flight
it jumps to the engine's next deadline (a silent client is a dropout there, as on the network). ``observer(party,
payload)`` sees every message delivered to the aggregator or key holder (tests use it to prove that no individual
loss ever reaches them). Bytes up/down are counted per client per round (protocol messages, the global model as
float32, and the one-time HE public context) and each platform's round time is modelled from them.
"""

from __future__ import annotations

import copy

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from secagg.errors import SecAggError, StageError
from secagg.roles import AGGREGATOR, KEYHOLDER, message_tag
from training.engine.rules.base import Strategy
from training.engine.contribution import IntegerNoise, contribute
from training.engine.audit import ModelAudit
from training.engine.core import Mail, OpenFailed, RoundDone, RoundEngine, Task, ToKeyholder
from training.engine.rounds import RoundPolicy, RoundRecord
from training.engine.state import ServerState
from training.engine.terms import StrategyStep
from training.errors import ConfigError
from training.workload.platforms import PlatformProfile, profiles_for
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate

__all__ = ["Federation", "RoundReport", "Observer"]

Observer = Callable[[str, bytes], None]


@dataclass
class RoundReport:
    """What one server step cost and who took part (no individual update or loss is recorded here)."""

    round: int
    version: int
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    compute_seconds: dict[int, float]
    modelled_seconds: dict[int, float]
    secure_seconds: float
    update_norm: float
    extra: dict = field(default_factory=dict)
    comm_seconds: dict[int, float] = field(default_factory=dict)  # modelled transfer time per client
    record: RoundRecord | None = None  # the engine's record of the round

    @property
    def total_up(self) -> int:
        return sum(self.bytes_up.values())

    @property
    def total_down(self) -> int:
        return sum(self.bytes_down.values())


class Federation:
    """Server state (in the engine), the clients' side, and the pump between them.

    Invariant: the global model changes only through the engine's server step on the secure aggregate;
    individual contributions exist only inside the client side of :meth:`_start` (never in the engine).
    ``noise_shares`` is the clients' configured number of distributed-noise shares (default: the cohort size
    the policy opens rounds with).
    """

    def __init__(self, initial: np.ndarray, strategy: Strategy, secure: SecureSum, clients: Sequence[int], *,
                 platforms: Sequence[PlatformProfile] | None = None, update_clip: float | None = None,
                 noise_multiplier: float = 0.0, observer: Observer | None = None,
                 noise_shares: int | None = None, min_cohort: int = 1) -> None:
        if update_clip is None and secure.scheme == "masking":
            raise ConfigError("masking needs a public value bound: set update_clip")
        if noise_multiplier and update_clip is None:
            raise ConfigError("distributed DP noise needs update_clip (its sensitivity)")
        if noise_multiplier and strategy.private_weights:
            raise ConfigError(f"distributed DP noise covers the update lanes only; the {strategy.name} rule's weight "
                              "lane (a function of private losses) would be released unnoised: use a public-weight "
                              "rule (fedavg, gradient, async)")
        self.strategy, self.secure = strategy, secure
        self.clients = list(clients)
        self.platforms = dict(zip(self.clients, profiles_for(len(self.clients), platforms)))
        self.update_clip, self.noise_multiplier = update_clip, float(noise_multiplier)
        self.min_cohort = int(min_cohort)
        self.observer = observer
        self.loss_reference: float | None = None  # public reference loss (the runner's validation loss)
        step = StrategyStep(strategy, reference=lambda _model: self.loss_reference)
        k = step.buffer_size or len(self.clients)
        self.noise_shares = int(noise_shares or min(k, len(self.clients)))
        policy = RoundPolicy(rounds=2**62, cohort_size=min(k, len(self.clients)), min_clients=1,
                             checkin_timeout=1.0, stage_timeout=1.0, max_closes=16)
        state = ServerState(np.asarray(initial, dtype=np.float64).copy(), next_round_id=secure.next_round_id)
        # each client's own replica of the server step, made before the strategy holds any state (.engine.audit)
        self.audits = {c: ModelAudit(secure.roles, StrategyStep(copy.deepcopy(strategy)), state.model)
                       for c in self.clients}
        self.engine = RoundEngine(secure.roles, state, policy,
                                  step=step, context=secure.context, public=secure.public)
        self._now = 0.0
        self._joined: set[int] = set()
        self._pending: dict[int, ClientUpdate] = {}
        self._drop: set[int] = set()  # clients of the running aggregate() that vanish before their input
        self.history: list[RoundReport] = []

    @property
    def global_vec(self) -> np.ndarray:
        return self.engine.state.model

    @property
    def version(self) -> int:
        return self.engine.state.round

    round = version  # rounds applied = the version of the global model

    def model_for(self, c: int) -> tuple[np.ndarray, int]:
        """Client ``c``'s copy of the current global model and its version, accepted only after the client's own
        audit (:class:`~training.engine.audit.ModelAudit`, proofs since the version it last verified): what
        every in-process client trains from, between rounds and mid-flight in an async run."""
        if c not in self.audits:
            raise ConfigError(f"model asked for by unknown client {c}")
        since = self.audits[c].version
        proofs = [p for p in self.engine.state.proofs if since is not None and p["round"] >= since]
        model = self.global_vec.copy()
        self.audits[c].check(self.version, model, proofs, self.secure.context)
        return model, self.version

    def submit(self, update: ClientUpdate) -> RoundReport | None:
        """Client ``update.client_id`` checks in with its trained update; the round runs once the engine's cohort
        policy says the cohort is complete (its report is returned), else None."""
        c = update.client_id
        if c not in self.platforms:
            raise ConfigError(f"update from unknown client {c}")
        base = update.base_version if self.engine.cohorts.asynchronous else None
        if not self.engine.checkin(c, float(update.num_samples), self._now, base=base,
                                   identity=self.secure.identity(c), verified=self.audits[c].version):
            self.engine.drain()
            raise ConfigError(f"client {c}: its update from version {update.base_version} is too stale for "
                              f"version {self.version}; it must fetch the current model")
        self._pending[c] = update
        self.engine.tick(self._now)
        if self.engine.current is None and len(self.engine.waiting) >= self.engine.policy.cohort_size:
            self._now = max(self._now, self.engine.next_deadline(self._now) or self._now)  # a retry wait passes
            self.engine.tick(self._now)
        return self._pump() if self.engine.current is not None else None

    def close(self) -> RoundReport:
        """Run the open round now with the clients that have submitted (the others are absent from it)."""
        if not self._pending:
            raise ConfigError("no client has submitted to the open round")
        self._now = max(self._now, self.engine.next_deadline(self._now) or self._now)
        self.engine.tick(self._now)
        return self._pump()

    def aggregate(self, updates: Mapping[int, ClientUpdate], *, drop: Sequence[int] = ()) -> RoundReport:
        """One round over ``updates`` (clients in ``drop`` vanish before submitting their input)."""
        unknown = [c for c in updates if c not in self.platforms]
        if unknown:
            raise ConfigError(f"updates from unknown clients {unknown}")
        self._clear()
        self._drop = set(drop)
        try:
            for c in sorted(updates):
                report = self.submit(updates[c])
                if report is not None:
                    return report
            return self.close()
        finally:
            self._drop = set()

    @property
    def pending(self) -> dict[int, ClientUpdate]:
        """Submitted updates waiting for their round."""
        return dict(self._pending)

    def _clear(self, members=None) -> dict[int, ClientUpdate]:
        """Take ``members`` (default: every pending client) out of the waiting room; their updates."""
        members = list(self._pending) if members is None else [c for c in members if c in self._pending]
        for c in members:
            self.engine.withdraw(c)
        return {c: self._pending.pop(c) for c in members}

    # ---- the pump -----------------------------------------------------------------------------------------
    def _pump(self) -> RoundReport:
        t0 = time.perf_counter()
        before = self.global_vec  # the engine replaces (never mutates) the model when it applies a round
        rnd = self.engine.current
        aggregator, cohort = (None, ()) if rnd is None else (rnd.role, sorted(rnd.cohort))
        self._roles: dict = {}
        self._gone: set[int] = set()
        self._peers: dict | None = None
        self._traffic = {"up": {}, "down": {}, "messages": {}, "keyholder": 0}
        self._drop_tag = self.secure.roles.drop_tag
        done: RoundDone | None = None
        try:
            while done is None:
                effects = self.engine.drain()
                if not effects:
                    deadline = self.engine.next_deadline(self._now)
                    if deadline is None:
                        raise StageError("the round stalled with no message in flight")
                    self._now = max(self._now, deadline)
                    self.engine.tick(self._now)
                    continue
                for eff in effects:
                    if isinstance(eff, Task):
                        self._start(eff)
                    elif isinstance(eff, Mail):
                        self._to_client(eff)
                    elif isinstance(eff, ToKeyholder):
                        self._finalize(eff)
                    elif isinstance(eff, RoundDone):
                        done = eff
                    elif isinstance(eff, OpenFailed):
                        raise eff.error
        except BaseException as exc:
            if self.engine.current is not None:
                self.engine.abort(self._now, exc if isinstance(exc, Exception) else StageError("interrupted"))
                self.engine.drain()
            if aggregator is None:  # the round never opened: the submissions wait again (the engine kept them)
                raise
            self._clear(cohort)
            raise
        finally:
            self.secure.next_round_id = self.engine.state.next_round_id  # the key holder's ids only increase
        updates = self._clear(cohort)
        self.secure.last_roles = (self._roles, aggregator, self.secure.keyholder)
        if done.error is not None:
            raise done.error
        norm = float(np.linalg.norm(self.global_vec - before))
        return self._report(done.record, updates, time.perf_counter() - t0, norm)

    def _start(self, task: Task) -> None:
        c, params = task.cid, task.header["params"]
        if task.model is not None:  # the client's own check of the model its update answers
            self.audits[c].check(task.header["round"], task.model, task.header.get("proofs"), self.secure.context)
        terms = params["strategy"]
        scheme = self.secure.roles
        noise = None if self.update_clip is None or not self.noise_multiplier else \
            IntegerNoise(self.noise_multiplier, self.update_clip, self.noise_shares)
        contrib = contribute(self.strategy, self._pending[c], task.header["round"], terms,
                             update_clip=self.update_clip,
                             noise_multiplier=0.0 if scheme.integer_noise else self.noise_multiplier,
                             noise_shares=self.noise_shares, cohort=len(params["cohort"]),
                             min_cohort=self.min_cohort)
        if self._peers is None and self.secure.signed:  # the cohort's verified keys, once per round
            self._peers = {i: self.secure.identity(i).key for i in params["cohort"]}
        role = scheme.client_role(c, params, self.secure.public, self.secure.signer(c), self._peers,
                                  sessions=self.secure.sessions[c], noise=noise, tag_key=self.secure.tag_key(c))
        self._roles[c] = role
        self._emit(c, task.round_id, role.start(contrib.vector, contrib.weight))

    def _count(self, kind: str, c: int, n: int) -> None:
        self._traffic[kind][c] = self._traffic[kind].get(c, 0) + n
        self._traffic["messages"][c] = self._traffic["messages"].get(c, 0) + 1

    def _emit(self, c: int, round_id: int, outs) -> None:
        for out in outs:
            if c in self._gone:
                return
            if c in self._drop and self._drop_tag is not None and message_tag(out.payload) == self._drop_tag:
                self._gone.add(c)  # vanishes: this message and everything after it are lost
                return
            self._count("up", c, len(out.payload))
            if self.observer is not None:
                self.observer("keyholder" if out.to == KEYHOLDER else "aggregator", out.payload)
            try:
                if out.to == KEYHOLDER:
                    self._traffic["keyholder"] += len(out.payload)
                    self.secure.keyholder.receive(c, out.payload)
                else:
                    self.engine.deliver(c, round_id, out.payload, self._now)
            except SecAggError:
                continue  # refused, as a networked deployment refuses it: the round goes on without it

    def _to_client(self, mail: Mail) -> None:
        role = self._roles.get(mail.cid)
        if role is None or mail.cid in self._gone:
            return
        self._count("down", mail.cid, len(mail.payload))
        try:
            outs = role.receive(mail.payload)
        except SecAggError:
            self._gone.add(mail.cid)  # a client that refuses a message leaves the round
            return
        self._emit(mail.cid, mail.round_id, outs)

    def _finalize(self, item: ToKeyholder) -> None:
        if self.observer is not None:
            self.observer("keyholder", item.payload)
        try:
            outs = self.secure.keyholder.receive(AGGREGATOR, item.payload)
        except Exception as exc:
            self.engine.keyholder_failed(item.round_id, exc, self._now)
            return
        self._traffic["keyholder"] += len(item.payload) + sum(len(o.payload) for o in outs)
        if self.observer is not None:
            for o in outs:
                self.observer("aggregator", o.payload)
        self.engine.keyholder_reply(item.round_id, outs, self._now)

    def _report(self, rec: RoundRecord, updates: Mapping[int, ClientUpdate], seconds: float,
                norm: float) -> RoundReport:
        res = rec.result
        if self.observer is not None:
            self.observer("aggregator-result", np.asarray(res.weighted_sum, dtype=np.float64).tobytes()
                          + np.float64(res.total_weight).tobytes())
        model_bytes = 4 * self.global_vec.size  # the published global model, float32 on the wire
        t = self._traffic
        up, down, comp, modelled, comm = {}, {}, {}, {}, {}
        for c, u in updates.items():
            setup = self.secure.setup_bytes if c not in self._joined else 0
            self._joined.add(c)
            up[c] = int(t["up"].get(c, 0))
            down[c] = int(t["down"].get(c, 0)) + model_bytes + setup
            comp[c] = u.seconds
            p = self.platforms[c]
            comm[c] = p.comm_seconds(up[c], down[c], t["messages"].get(c, 0) + 1)
            modelled[c] = p.compute_seconds(u.seconds) + comm[c]
        report = RoundReport(rec.round + 1, self.version, tuple(res.contributors), tuple(res.dropped), up, down,
                             comp, modelled, seconds, norm, {"keyholder_bytes": t["keyholder"]},
                             comm, rec)
        report.extra["noise_shares"] = (self.noise_shares, len(res.contributors))  # (n, m): configured, survived
        self.history.append(report)
        return report
