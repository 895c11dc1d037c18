"""The Flower ServerApp: the untrusted aggregator, driving the round engine with ``grid.send_and_receive``.

Discovery (``hello``, with a fresh 32-byte nonce): a Flower node is mapped to a party only by that party's
Ed25519 signature (its certified key) over the run, the nonce and the Flower node id, so a node cannot take
another client's or the key holder's place, relay another node's answer, or replay an earlier one.
Each engine step is one batch of messages: check-ins (``checkin``; asynchronous clients without an update get
``model``), the round's tasks and mail (``task``/``mail``: each reply carries the client role's outbound
messages), relayed pad seeds and the aggregate for the key-holder node (``seed``/``finalize``). The ServerApp
never holds a secret key: it relays the key holder's signed public bundle (``setup``) and sealed, signed pad seeds.
Its clock is logical: when a batch's replies are in and nothing is in flight, it jumps to the engine's next
deadline, so a node that did not answer within ``timeout`` seconds is a dropout of that stage, as over gRPC.
Privacy reports: a client's DP events are composed once; the next check-in request names the report id the
engine recorded (``acked``), and only then does the client drop it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from typing import Any


from secagg.errors import AuthenticationError, SecAggError, StageError
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
from training.engine.codec import model_bytes, proofs_out
from training.engine.core import Mail, ModelReply, RoundDone, RoundEngine, Task, ToKeyholder
from training.engine.central import central_account, central_of
from training.engine.metrics import RoundMetrics, metrics_of, placement_of
from training.engine.roles import make_scheme
from training.engine.rounds import RoundPolicy
from training.engine.state import ServerState
from training.flower.protocol import MESSAGE_TYPE, Trust, pack, unpack

__all__ = ["FlowerAggregator", "make_server_app"]

log = logging.getLogger("training.flower.server")


class FlowerAggregator:
    """Runs ``settings["rounds"]`` rounds over ``grid``; :attr:`rows` gets one metrics row per attempt."""

    def __init__(self, grid, settings: dict[str, Any], trust: Trust, work, *, timeout: float = 120.0) -> None:
        self.grid, self.settings, self.trust, self.work, self.timeout = grid, settings, trust, work, timeout
        self.scheme = make_scheme(settings["scheme"], settings["scheme_options"])
        self.n = int(settings["clients"])
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.keyholder: int | None = None
        self.acked: dict[int, str] = {}
        self.rows: list[RoundMetrics] = []
        self.server_cpu: list[float] = []  # per round: this (ServerApp) thread's CPU seconds, waits excluded
        self.parts = 0  # contribution parts asked for (``part``): the streamed ones past each reply's first
        self.now = 0.0
        self.engine: RoundEngine | None = None
        self.initial_loss = float(work.evaluate(work.initial_model())["loss"])

    # ---- messaging ----------------------------------------------------------------------------------------
    def _send(self, batch: list[tuple[int, Any]]) -> list[tuple[int, str, dict, bytes, list[Outbound]]]:
        """The valid replies to ``batch`` (small messages; a round's contributions go through :meth:`_exchange`)."""
        out: list = []
        self._exchange(batch, lambda *reply: out.append(reply))
        return out

    def _exchange(self, batch: list[tuple[int, Any]], handle) -> None:
        """Push ``batch`` and hand each valid reply to ``handle(node, op, head, body, outs)`` as it is pulled, so
        the ServerApp holds the replies one pull at a time, not the whole batch's; stops when every reply is in
        or ``timeout`` passed (a node that did not answer is a dropout of that stage)."""
        from flwr.app import Message

        if not batch:
            return
        group = "setup" if self.engine is None else str(len(self.rows) + 1)  # Flower's convention: the round
        ids = set(self.grid.push_messages([Message(content, dst_node_id=node, message_type=MESSAGE_TYPE,
                                                   group_id=group) for node, content in batch]))
        del batch
        end = time.monotonic() + self.timeout
        while ids and time.monotonic() < end:
            pulled = False
            for reply in self.grid.pull_messages(ids):
                pulled = True
                ids.discard(reply.metadata.reply_to_message_id)
                parsed = self._parsed(reply)
                del reply
                if parsed is not None:
                    handle(*parsed)
                del parsed
            if ids and not pulled:
                time.sleep(0.02)

    @staticmethod
    def _parsed(reply) -> tuple[int, str, dict, bytes, list[Outbound]] | None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d failed: %s", node, reply.error.reason)
            return None
        try:
            op, head, body, outs = unpack(reply.content)
        except SecAggError as exc:
            log.warning("node %d sent %s", node, exc)
            return None
        if op == "refused":
            log.warning("node %d refused: %s: %s", node, head.get("error"), head.get("reason"))
            return None
        return node, op, head, body, outs

    def _client(self, node: int) -> int | None:
        return next((c for c, n in self.nodes.items() if n == node), None)

    def _discover(self) -> None:
        want = self.n + (1 if self.scheme.needs_keyholder else 0)
        end = time.monotonic() + self.timeout
        while len(ids := list(self.grid.get_node_ids())) < want:
            if time.monotonic() > end:
                raise StageError(f"{len(ids)} of {want} Flower nodes connected within {self.timeout} s")
            time.sleep(0.5)
        for _ in range(3):  # a node's first message may have to start its process: ask the silent ones again
            ask = [i for i in ids if i not in self.nodes.values() and i != self.keyholder]
            if self._mapped() or not ask:
                break
            self._hello(ask)
        if not self._mapped():
            raise AuthenticationError(f"nodes answered as clients {sorted(self.nodes)} and key holder "
                                      f"{self.keyholder}; expected {self.n} clients" +
                                      (" and a key holder" if self.scheme.needs_keyholder else ""))

    def _mapped(self) -> bool:
        return len(self.nodes) == self.n and (self.keyholder is not None or not self.scheme.needs_keyholder)

    def _hello(self, ask: list[int]) -> None:
        nonce = secrets.token_bytes(32)
        for node, _, head, _, _ in self._send([(i, pack("hello", {"nonce": nonce.hex()})) for i in ask]):
            party = KEYHOLDER if head.get("role") == "keyholder" else head.get("client_id")
            if not (party == KEYHOLDER or (type(party) is int and 0 <= party < self.n)):
                log.warning("node %d claimed no party of this run: %r", node, head)
                continue
            sig = head.get("signature")
            try:
                if not (isinstance(sig, str) and len(sig) == 128):  # 64 bytes of Ed25519, checked before decoding
                    raise AuthenticationError("the hello carries no 64-byte signature")
                self.trust.verify_hello(party, self.settings["run"], nonce, node, bytes.fromhex(sig))
            except (AuthenticationError, ValueError, OverflowError) as exc:
                log.warning("node %d: hello refused: %s", node, exc)
                continue
            if party == KEYHOLDER:
                self.keyholder = node if self.keyholder is None else self.keyholder
            else:
                self.nodes.setdefault(party, node)

    def _grant_tag_keys(self, replies) -> None:
        """Relay each client's signed tag-key request to the key holder and its sealed grant back (the server
        can open neither: the request is signed by the client, the grant sealed to the client's key)."""
        asks = [(self._client(node), body) for node, _, _, body, _ in replies if self._client(node) is not None]
        if not asks:
            return
        ((_, _, head, _, grants),) = self._send([(self.keyholder, pack(
            "grant", {"senders": [AGGREGATOR] * len(asks)}, outs=[Outbound(KEYHOLDER, body) for _, body in asks]))])
        for refused in head.get("refused", []):
            log.warning("the key holder refused a tag-key request: %s", refused)
        self._send([(self.nodes[g.to], pack("tagkey", {}, g.payload)) for g in grants if g.to in self.nodes])

    # ---- the run ------------------------------------------------------------------------------------------
    def run(self) -> list[RoundMetrics]:
        self._discover()
        context = None
        if self.scheme.needs_keyholder:
            ((_, _, head, context, _),) = self._send([(self.keyholder, pack("context"))])
            setup = [(self.nodes[c], pack("setup", {"signature": head["signature"]}, context)) for c in self.nodes]
            self._grant_tag_keys(self._send(setup))
        s = self.settings
        policy = RoundPolicy(s["rounds"], s["cohort_size"], s["min_clients"], checkin_timeout=1.0,
                             stage_timeout=1.0, max_closes=4, clients=len(self.nodes))
        self.engine = eng = RoundEngine(self.scheme, ServerState(self.work.initial_model()), policy,
                                        step=self.work.step(), context=context, ledger_budget=self.work.ledger_budget)
        self.central = central_account(s.get("noise_multiplier", 0.0), noise_shares=s["cohort_size"],
                                       delta=self.work.ledger_budget[1], dim=self.work.dim,
                                       colluders=self.work.colluders, scheme=self.scheme.name,
                                       **s.get("masking", {}))
        if context is not None:
            for c in self.nodes:
                eng.count_sent(c, len(context))
        idle_steps, fresh = 0, False
        while not eng.finished:
            if not fresh:
                self._checkins()
            fresh = False
            eng.tick(self.now)
            if eng.current is None:
                idle_steps += 1
                if idle_steps > 64:
                    raise StageError("no round could be opened with the clients that checked in")
                self.now += 1.0
                continue
            idle_steps = 0
            cpu = time.thread_time()
            self._round()
            self.server_cpu.append(time.thread_time() - cpu)
            fresh = True  # the round's end collected the check-ins (and privacy reports) already
        return self.rows

    def _checkins(self) -> None:
        eng = self.engine
        busy = set() if eng.current is None else set(eng.current.cohort)
        batch = [(self.nodes[c], pack("checkin", {"acked": self.acked.get(c)})) for c in self.nodes if c not in busy]
        for node, _, head, _, _ in self._send(batch):
            c = self._client(node)
            try:
                eng.checkin(c, head.get("weight"), self.now, base=head.get("base"), privacy=head.get("privacy"),
                            report=head.get("report", ""), retire=head.get("retire"), verified=head.get("verified"),
                            placement=head.get("placement"), identity=self.trust.identity(c) if self.scheme.needs_identities else None)
                if head.get("privacy"):
                    self.acked[c] = head["report"]
            except SecAggError as exc:
                log.warning("client %d: check-in refused: %s: %s", c, type(exc).__name__, exc)
        models, memo, batch = [e for e in eng.drain() if isinstance(e, ModelReply)], {}, []
        for e in models:
            eng.count_sent(e.cid, 4 * e.model.size)
            batch.append((self.nodes[e.cid], pack("model", *_with_proofs(memo, {"version": e.version}, e.proofs,
                                                                            e.model))))
        del memo, models
        self._send(batch)

    def _round(self) -> None:
        """The open round to its end. A streamed contribution's first part rides on the reply that made it; its
        later parts are asked for one per client per step (``part``), in lockstep: the ServerApp holds at most one
        part per client, and the HE window never refuses one (every client's part ``j`` is in before anyone is
        asked for part ``j + 1``, so the forwarded frontier is at ``j + 1``'s start)."""
        eng, t0 = self.engine, time.perf_counter()
        self.streams: dict[int, list[int]] = {}  # client -> [next part index, parts in all]
        while True:
            effects = eng.drain()
            done = next((e for e in effects if isinstance(e, RoundDone)), None)
            if done is not None:
                self.streams.clear()
                return self._done(done, time.perf_counter() - t0)
            batch, mail, bodies = [], defaultdict(list), {}
            for e in effects:
                if isinstance(e, Task):
                    proofs = e.header.get("proofs", [])
                    head, body = _with_proofs(bodies, e.header, proofs, e.model)
                    eng.count_sent(e.cid, len(body))
                    batch.append((self.nodes[e.cid], pack("task", head, body)))
                elif isinstance(e, Mail):
                    mail[e.cid].append(Outbound(e.cid, e.payload))
            del bodies
            batch += [(self.nodes[c], pack("mail", {"round_id": eng.current.round_id}, outs=m))
                      for c, m in mail.items()]
            finals = [e for e in effects if isinstance(e, ToKeyholder)]
            del effects
            asked = {c for c, (nxt, total) in self.streams.items() if nxt < total}
            batch += [(self.nodes[c], pack("part", {"round_id": eng.current.round_id, "index": self.streams[c][0]}))
                      for c in sorted(asked)]
            self.parts += len(asked)
            if not batch and not finals:
                deadline = eng.next_deadline(self.now)
                if deadline is None:
                    raise StageError("the round stalled with no message in flight")
                self.now = max(self.now, deadline)
                eng.tick(self.now)
                continue
            self._collect(batch, asked)
            for e in finals:
                self._finalize(e)

    def _collect(self, batch, asked: set[int]) -> None:
        """Exchange ``batch``; each reply's contribution goes to the engine as it is pulled, except behind pad
        seeds: those replies' messages wait until the batch's seeds reached the key holder (one message), so a
        seed is there before a contribution that may complete the sum (at most one part per client waits)."""
        eng, seeds, behind = self.engine, [], []
        rid = eng.current.round_id if eng.current is not None else None

        def handle(node, op, head, body, outs) -> None:
            c = self._client(node)
            if c is None:
                return
            self._track(c, op, head)
            if op == "part":
                asked.discard(c)
            mine = [(c, o.payload) for o in outs if o.to == KEYHOLDER]
            seeds.extend(mine)
            for o in outs:
                if o.to == AGGREGATOR:
                    (behind.append((c, o.payload)) if mine else self._offer(c, rid, o.payload))

        self._exchange(batch, handle)
        for c in asked:  # asked for a part and did not send it: its stream is over (the engine's deadline decides)
            self.streams.pop(c, None)
        if seeds:
            self._send([(self.keyholder, pack("seed", {"senders": [c for c, _ in seeds]},
                                              outs=[Outbound(KEYHOLDER, p) for _, p in seeds]))])
        for c, payload in behind:
            self._offer(c, rid, payload)

    def _track(self, c: int, op: str, head: dict) -> None:
        """Note the parts client ``c`` announced (``task``/``mail``: ``parts``, 1 when nothing waits) or sent."""
        if op == "part" and c in self.streams:
            self.streams[c][0] += 1
        elif op in ("task", "mail"):
            parts = head.get("parts", 1)
            if type(parts) is int and 1 < parts <= self.work.dim + 1:  # no more parts than values
                self.streams[c] = [1, parts]

    def _offer(self, c: int, rid: int | None, payload: bytes) -> None:
        eng = self.engine
        if eng.current is None or eng.current.round_id != rid:
            return
        try:
            eng.deliver(c, rid, payload, self.now)
        except SecAggError as exc:
            log.warning("client %d: message refused: %s: %s", c, type(exc).__name__, exc)

    def _finalize(self, e: ToKeyholder) -> None:
        replies = self._send([(self.keyholder, pack("finalize", {"round_id": e.round_id}, e.payload))])
        if not replies:
            self.engine.keyholder_failed(e.round_id, StageError("the key holder did not finalize"), self.now)
            return
        self.engine.keyholder_reply(e.round_id, replies[0][4], self.now)

    def _done(self, done: RoundDone, seconds: float) -> None:
        """The round's row, after the clients' next check-in: it reports the DP events of this round's training,
        so the row's ε covers everything released so far (also after the last round)."""
        rec, state = done.record, self.engine.state
        self._send([(self.nodes[c], pack("end", {"round_id": rec.round_id})) for c in rec.cohort])
        self._checkins()
        loss = float(self.work.evaluate(state.model)["loss"]) if rec.status == "done" else None
        eps = {int(c): ledger["spent"] for c, ledger in state.ledgers.items()}
        self.rows.append(metrics_of(rec, loss=loss, epsilon_per_client=eps, seconds=seconds, secure_seconds=seconds,
                                    language_model=self.settings.get("trainer") == "local",
                                    **central_of(self.central, rec), **placement_of(self.engine.placements)))
        if rec.status != "done":
            log.warning("round %d (id %d) aborted: %s", rec.round, rec.round_id, rec.reason)


def make_server_app(settings: dict[str, Any], trust: Trust, workload, result: dict, *, timeout: float = 120.0):
    """The ServerApp; ``result`` receives ``rows``, ``initial_loss``, ``model``, ``server_cpu_seconds`` (per
    round) and ``parts`` when the run ends. Messages carry ``group_id`` = the round (``setup`` before the first)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        agg = FlowerAggregator(grid, settings, Trust(trust.keyholder_public, trust.roster), workload(),
                               timeout=timeout)
        result["initial_loss"] = agg.initial_loss
        result["rows"] = agg.rows
        agg.run()
        result["model"] = agg.engine.state.model.copy()
        result["server_cpu_seconds"] = agg.server_cpu
        result["parts"] = agg.parts
        result["stop_reason"] = agg.engine.stop_reason  # too few clients could go on, or too many aborts

    return app


def _with_proofs(memo: dict, head: dict, proofs: list, model) -> tuple[dict, bytes]:
    """``head`` with the proofs' heads, and the body: their releases, then the model
    (:func:`training.engine.codec.proofs_out`). One body per distinct (model, proofs) in ``memo``: the clients of
    one batch share one bytes object, not one copy each."""
    key = (id(model), tuple(id(p) for p in proofs))
    if key not in memo:
        heads, releases = proofs_out(proofs)
        memo[key] = heads, b"".join([*releases, b"" if model is None else model_bytes(model)])
    heads, body = memo[key]
    return {**head, "proofs": heads}, body
