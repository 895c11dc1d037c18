"""The Flower ClientApp: a client node runs the engine's client side, the key-holder node runs the key holder.

A node's role comes from its node config: ``role = "keyholder"`` (``flower-supernode --node-config
"role='keyholder'"``) or a client with ``client-id`` (default: the simulation's ``partition-id``). A deployed SuperNode starts a fresh
process per message, so a node's state (its :class:`~training.engine.client.ClientSession`, the open round's role
with a masking client's keys and shares, the key holder's secret context and pad seeds) lives between messages
only sealed in ``context.state`` (:class:`NodeProcess`): AES-GCM under a key derived from the party's own
signing key, bound to the run and the party, so a blob altered, replayed into another run, or handed to another
party does not open (``SnapshotError``, the message is refused).

Checks on what the untrusted ServerApp sends: the key holder's public bundle must carry the trusted key holder's
signature, and every task must name exactly that bundle (``context_id``); a signed masking task must name the
cohort's trusted roster (its digest over the trusted fingerprints), and the peers' keys come from the trusted
roster, never from the message; task validation is the session's. The key holder accepts pad seeds only signed by
the client they name (it was made with the trusted roster) and finalizes through the one
:class:`~training.engine.keyholder.KeyHolderDesk`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any


from secagg.errors import AuthenticationError, MalformedMessageError, SecAggError, StageError
from secagg.he_round import TagKeyRequest
from secagg.messages import decode
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
from secagg.snapshot import SnapshotError, seal, unseal
from training.flower.spool import Spool, UpdateFile, spool_dir
from training.engine.audit import ModelAudit
from training.engine.client import ClientSession
from training.engine.codec import field, model_from, proofs_in
from training.engine.keyholder import KeyHolderDesk, StaleKeyError
from training.engine.roles import context_id, make_keyholder, make_scheme, roster_digest
from training.flower.protocol import Trust, pack, unpack

__all__ = ["make_client_app", "NodeProcess", "serve"]

log = logging.getLogger("training.flower.client")
_WORK: dict[str, Any] = {}  # this process's workload and update sources (public code and data, not state)
STATE = "secagg"  # the context.state ConfigRecord that holds this node's sealed state
PART_CHUNKS = 128  # chunks per streamed part on Flower (≈ 32 MiB masking 32-bit, ≈ 27 MiB CKKS): fewer messages


class NodeProcess:
    """One node's protocol state, restored from and sealed back into ``context.state`` around every message.

    Flower's SuperNode may start a fresh process per message, so nothing but the sealed blob survives: the client
    sessions' pending privacy report, asynchronous update and masking sessions, the open round's role (a masking
    client's keys and shares; its update waits encrypted on the node's disk, :class:`UpdateFile`), the verified
    public bundle, and the key holder's desk (secret context, seal key, pad seeds, finalized rounds). The blob is AES-GCM under this party's own key (:meth:`Trust.state_key`) bound
    to the run and the party (:mod:`secagg.snapshot`)."""

    def __init__(self, settings: dict[str, Any], trust: Trust, workload: Callable[[], Any], node_id: int = 0) -> None:
        self.settings, self.trust, self.workload, self.node_id = settings, trust, workload, node_id
        self.scheme = make_scheme(settings["scheme"], settings["scheme_options"])
        self.sessions: dict[int, ClientSession] = {}
        self.roles: dict[int, tuple[int, Any]] = {}  # client -> (round id, role)
        self.bundles: dict[int, bytes] = {}  # client -> the verified public context
        self.asks: dict[int, TagKeyRequest] = {}  # client -> its open tag-key request (the grant opens with it)
        self.spools: dict[int, Spool] = {}  # client -> the open round's parts not yet sent (on this node's disk)
        self.updates: dict[int, UpdateFile] = {}  # client -> its masking update, encrypted on disk until masked
        self.desk: KeyHolderDesk | None = None

    def work(self):
        key = self.settings["run"]
        if key not in _WORK:
            _WORK.clear()
            _WORK[key] = (self.workload(), {})
        return _WORK[key]

    def source(self, cid: int, carried: tuple | None = None):
        """Client ``cid``'s update source; a fresh one takes over the ``carried`` state of an earlier process:
        DP events not yet reported, and a trainer's state (its DP history, so the ledger covers the client's
        whole life, and optimizer state)."""
        work, sources = self.work()
        if cid not in sources:
            sources[cid] = work.source(cid)
            if carried is not None:
                events, state = carried
                if state is not None:
                    sources[cid].load_state(state)
                if events:
                    sources[cid].events = tuple(events)
        return sources[cid]

    # ---- node state -----------------------------------------------------------------------------------------
    def restore(self, state, key: bytes, aad: bytes) -> None:
        if STATE not in state:
            return
        try:
            blob = state[STATE]["blob"]
        except (KeyError, TypeError) as exc:
            raise SnapshotError("the node state holds no sealed blob") from exc
        saved = unseal(blob, key, aad, allow=("training.", "privacy."))
        for cid, (report, trained, sessions, carried, tag_key, audit) in saved["sessions"].items():
            s = self.sessions[cid] = ClientSession(cid, self.scheme, self.source(cid, carried))
            s.report, s.trained, s.sessions, s.tag_key = report, trained, sessions, tag_key
            s.audit = self._audit()
            s.audit.version, s.audit.model = audit[0], audit[1]
            s.audit.step.load_state_dict(audit[2])
        self.roles, self.bundles, self.desk, self.asks = saved["roles"], saved["bundles"], saved["desk"], saved["asks"]
        self.spools, self.updates = saved["spools"], saved.get("updates", {})

    def save(self, state, key: bytes, aad: bytes) -> None:
        from flwr.app import ConfigRecord

        saved = {"sessions": {c: (s.report, s.trained, s.sessions, _carried(s.source), s.tag_key,
                                  (s.audit.version, s.audit.model, s.audit.step.state_dict()))
                              for c, s in self.sessions.items()},
                 "roles": self.roles, "bundles": self.bundles, "desk": self.desk, "asks": self.asks,
                 "spools": self.spools, "updates": self.updates}
        state[STATE] = ConfigRecord({"blob": seal(saved, key, aad)})

    def _audit(self) -> ModelAudit:
        """A client's check of every model it is sent (sealed between messages as version, model, rule state)."""
        return ModelAudit(self.scheme, self.work()[0].step())

    # ---- key holder ---------------------------------------------------------------------------------------
    def keyholder(self, op: str, head: dict, body: bytes, outs: list[Outbound]):
        if op == "hello":
            return pack("hello", {"role": "keyholder", "signature": self._hello(KEYHOLDER, head)})
        if self.desk is None:
            roster = {c: self.trust.public(c) for c in self.trust.roster}
            self.desk = KeyHolderDesk(make_keyholder(self.settings["scheme"], self.settings["scheme_options"],
                                                     peer_identities=roster))
        if op == "context":
            return pack("context", {"signature": self.trust.sign_context(self.desk.context).hex()}, self.desk.context)
        if op == "grant":
            grants, refused = [], []
            for out, sender in zip(outs, field(head, "senders", list)):
                try:
                    grants.append(Outbound(decode(out.payload).client_id, self.desk.grant(int(sender), out.payload)))
                except SecAggError as exc:
                    refused.append(f"{type(exc).__name__}: {exc}")
            return pack("grant", {"refused": refused}, outs=grants)
        if op == "seed":
            refused = []
            for out, sender in zip(outs, field(head, "senders", list)):
                try:
                    self.desk.seed(int(sender), out.payload)
                except SecAggError as exc:
                    refused.append(f"{type(exc).__name__}: {exc}")
            return pack("seed", {"refused": refused})
        if op == "finalize":
            return pack("finalize", {}, outs=self.desk.finalize(field(head, "round_id", int), body))
        raise MalformedMessageError(f"the key holder has no op {op!r}")

    def _hello(self, party: int, head: dict) -> str:
        """This node's signed claim to serve ``party`` (the ServerApp maps Flower nodes to parties by it)."""
        return self.trust.sign_hello(party, self.settings["run"], _hex(head, "nonce", 32), self.node_id).hex()

    # ---- clients ------------------------------------------------------------------------------------------
    def client(self, cid: int, op: str, head: dict, body: bytes, outs: list[Outbound]):
        session = self.sessions.get(cid)
        if session is None:
            session = self.sessions[cid] = ClientSession(cid, self.scheme, self.source(cid))
            session.audit = self._audit()
        if op == "hello":
            return pack("hello", {"role": "client", "client_id": cid, "signature": self._hello(cid, head)})
        if op == "setup":
            self.trust.verify_context(body, _hex(head, "signature", 64))
            self.bundles[cid] = body
            self.asks[cid] = TagKeyRequest(body, cid, self.trust.signer(cid))  # relayed: signed by this client
            return pack("setup", {}, self.asks[cid].payload)
        if op == "tagkey":
            if cid not in self.asks:
                raise StageError(f"client {cid} asked for no tag key")
            session.tag_key = self.asks.pop(cid).open(body)
            return pack("tagkey")
        if op == "checkin":
            if session.report is not None and head.get("acked") == session.report[0]:
                session.acknowledged()
            return pack("checkin", session.checkin())
        if op == "model":
            proofs, model = proofs_in(field(head, "proofs", list, []), body)
            session.on_model(field(head, "version", int), model_from(model), proofs, self.bundles.get(cid))
            return pack("model")
        if op == "task":
            return self._task(session, head, body)
        if op == "mail":
            return self._mail(cid, field(head, "round_id", int), outs)
        if op == "part":
            return self._part(cid, field(head, "round_id", int), field(head, "index", int))
        if op == "end":
            self.roles.pop(cid, None)
            self._drop_spool(cid)
            self._drop_update(cid)
            return pack("end")
        raise MalformedMessageError(f"a client has no op {op!r}")

    def _task(self, session: ClientSession, head: dict, body: bytes):
        cid = session.client_id
        self.roles.pop(cid, None)
        self._drop_spool(cid)
        self._drop_update(cid)
        params = field(head, "params", dict)
        context = None
        if self.scheme.needs_keyholder:
            context = self.bundles.get(cid)
            if context is None or context_id(context) != field(params, "context_id", str):
                raise StaleKeyError("the task names a public context this client has not verified")
        proofs, model = proofs_in(field(head, "proofs", list, []), body)
        round_id, params, vector, weight = session.on_task(
            {**head, "proofs": proofs}, model_from(model, field(params, "dim", int)) if len(model) else None, context)
        cohort = [int(c) for c in field(params, "cohort", list)]
        signed = self.scheme.needs_identities or self.scheme.needs_keyholder
        peers = None
        if "identities" in params:
            trusted = {c: self.trust.identity(c).fingerprint for c in cohort}
            if field(params, "identities", str) != roster_digest(trusted):
                raise AuthenticationError("the task names signing identities that are not the trusted roster's")
            peers = {c: self.trust.public(c) for c in cohort}
        role = session.role(params, context, self.trust.signer(cid) if signed else None, peers)
        stream = getattr(role, "stream", None)  # streamed: parts made as they are spooled, never all at once
        if stream is not None and not self.scheme.needs_keyholder:  # masking: the update waits for the shares
            vector = self.updates[cid] = UpdateFile.write(spool_dir(self.settings.get("spool")),
                                                          f"{self.settings['run']}-c{cid}-r{round_id}", vector)
        try:
            outs, parts = self._emit(cid, round_id, role.start(vector, weight) if stream is None else stream(
                vector, weight, part_chunks=int(self.settings.get("part_chunks") or PART_CHUNKS)))
        except BaseException:  # a refused task leaves no file behind
            self._drop_update(cid)
            raise
        if not role.done:  # masking: the role's keys and shares wait (sealed) for the round's next message
            self.roles[cid] = (round_id, role)
        return pack("task", {"round_id": round_id, "parts": parts}, outs=outs)

    def _mail(self, cid: int, round_id: int, inbox: list[Outbound]):
        if cid not in self.roles or self.roles[cid][0] != round_id:
            raise StageError(f"client {cid} holds no role for round {round_id} in this process")
        role, sent = self.roles[cid][1], []
        for msg in inbox:
            try:
                sent.append(role.receive(msg.payload))  # a streamed answer stays an iterator: made as it is spooled
            except SecAggError as exc:  # a bad message from the aggregator: refuse it, keep going
                log.warning("client %d refused a message: %s: %s", cid, type(exc).__name__, exc)
        outs, parts = self._emit(cid, round_id, (o for answer in sent for o in answer))
        if role.done:
            self.roles.pop(cid, None)
            self._drop_update(cid)
        return pack("mail", {"round_id": round_id, "done": role.done, "parts": parts}, outs=outs)

    def _part(self, cid: int, round_id: int, index: int):
        spool = self.spools.get(cid)
        if spool is None or spool.round_id != round_id:
            raise StageError(f"client {cid} has no spooled parts of round {round_id}")
        return pack("part", {"round_id": round_id, "index": index}, outs=[Outbound(AGGREGATOR, spool.read(index))])

    def _emit(self, cid: int, round_id: int, outs: Iterable[Outbound]) -> tuple[list[Outbound], int]:
        """The reply's messages: every one up to and including the first to the aggregator; the later ones (the
        parts of a streamed contribution) are spooled as they are made. Also the count of parts, the reply's own
        aggregator message counted (1: nothing spooled)."""
        it, reply = iter(outs), []
        for out in it:
            reply.append(out)
            if out.to == AGGREGATOR:
                break

        def rest():
            for out in it:
                if out.to != AGGREGATOR:
                    raise MalformedMessageError("a streamed contribution sends its parts to the aggregator only")
                yield out.payload

        self._drop_spool(cid)
        spool = Spool.write(spool_dir(self.settings.get("spool")), f"{self.settings['run']}-c{cid}", round_id, rest())
        if spool is not None:
            self.spools[cid] = spool
        return self._checked(reply), 1 if spool is None else spool.total

    def _drop_spool(self, cid: int) -> None:
        spool = self.spools.pop(cid, None)
        if spool is not None:
            spool.remove()

    def _drop_update(self, cid: int) -> None:
        update = self.updates.pop(cid, None)
        if update is not None:
            update.remove()

    @staticmethod
    def _checked(outs: list[Outbound]) -> list[Outbound]:
        if any(o.to not in (AGGREGATOR, KEYHOLDER) for o in outs):
            raise MalformedMessageError("client roles talk to the aggregator or key holder only")
        return outs


def _hex(head: dict, key: str, size: int) -> bytes:
    """``head[key]``: exactly ``size`` bytes as hex (checked before decoding); MalformedMessageError else."""
    text = field(head, key, str)
    try:
        if len(text) != 2 * size:
            raise ValueError(f"{len(text)} hex digits")
        return bytes.fromhex(text)
    except ValueError as exc:
        raise MalformedMessageError(f"{key!r} is not {size} bytes of hex: {exc}") from exc


def _carried(source) -> tuple:
    state = getattr(source, "state", None)
    return tuple(getattr(source, "events", ())), None if state is None else state()


def _party(settings: dict[str, Any], cfg) -> int:
    """The party this node serves, from its node config: the key holder, or client ``client-id`` (in
    simulation: ``partition-id``, the last partition being the key holder)."""
    if cfg.get("role") == "keyholder" or ("role" not in cfg and int(cfg.get("partition-id", -1)) == settings["clients"]):
        return KEYHOLDER
    cid = int(cfg.get("client-id", cfg.get("partition-id", -1)))
    if not 0 <= cid < settings["clients"]:
        raise AuthenticationError(f"this node's client-id {cid} is not a client of this run")
    return cid


def serve(settings: dict[str, Any], trust: Trust, workload: Callable[[], Any], msg, context):
    """Answer one message: restore this node's sealed state, handle, seal it back (a refused message leaves
    the state as it was)."""
    from flwr.app import Message

    try:
        party = _party(settings, context.node_config)
        key = trust.state_key(party)
        aad = f"{context.run_id}|{settings['run']}|{party}".encode()
        proc = NodeProcess(settings, trust, workload, int(context.node_id))
        proc.restore(context.state, key, aad)
        op, head, body, outs = unpack(msg.content)
        if party == KEYHOLDER:
            reply = proc.keyholder(op, head, body, outs)
        else:
            reply = proc.client(party, op, head, body, outs)
        proc.save(context.state, key, aad)
        return Message(reply, reply_to=msg)
    except SecAggError as exc:
        return Message(pack("refused", {"error": type(exc).__name__, "reason": str(exc)}), reply_to=msg)


def make_client_app(settings: dict[str, Any], trust: Trust, workload: Callable[[], Any], mods: tuple = ()):
    """The ClientApp for a run with ``settings`` (scheme, options, a ``run`` token), out-of-band ``trust`` and a
    ``workload`` factory (called once per process); ``mods``: Flower client mods, outermost first."""
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods))

    @app.query("secagg")  # the driver's one message type: protocol.MESSAGE_TYPE
    def handle(msg, context):
        return serve(settings, trust, workload, msg, context)

    return app
