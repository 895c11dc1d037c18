"""The Flower ClientApp: a client node runs the engine's client side, the key-holder node runs the key holder.

A node's role comes from its node config: ``role = "keyholder"`` (``flower-supernode --node-config
"role='keyholder'"``) or a client with ``client-id`` (default: the simulation's ``partition-id``). Per node the
process keeps its :class:`~training.engine.client.ClientSession` and the role of the open round (the masking
client's keys live across the round's messages, so one process must serve a node for a whole round: in
simulation ``secagg flower sim`` runs one actor); the key holder keeps its secret key in memory only.

Checks on what the untrusted ServerApp sends: the key holder's public bundle must carry the trusted key holder's
signature, and every task must name exactly that bundle (``context_id``); a signed masking task must name the
cohort's trusted roster (its digest over the trusted fingerprints), and the peers' keys come from the trusted
roster, never from the message; task validation is the session's. The key holder accepts pad seeds only signed by
the client they name (it was made with the trusted roster) and finalizes through the one
:class:`~training.engine.keyholder.KeyHolderDesk`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


from secagg.errors import AuthenticationError, MalformedMessageError, SecAggError, StageError
from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound
from training.engine.client import ClientSession
from training.engine.codec import field, model_from
from training.engine.keyholder import KeyHolderDesk, StaleKeyError
from training.engine.roles import context_id, make_keyholder, make_scheme, roster_digest
from training.flower.protocol import Trust, pack, unpack

__all__ = ["make_client_app", "NodeProcess"]

log = logging.getLogger("training.flower.client")
_PROCESS: dict[str, "NodeProcess"] = {}  # this process's node state, for the run named by settings["run"]


class NodeProcess:
    """Everything one process keeps for the nodes it serves (keyed by client id; the key holder by role)."""

    def __init__(self, settings: dict[str, Any], trust: Trust, workload: Callable[[], Any]) -> None:
        self.settings, self.trust, self.workload = settings, trust, workload
        self.scheme = make_scheme(settings["scheme"], settings["scheme_options"])
        self._work = None
        self.sessions: dict[int, ClientSession] = {}
        self.roles: dict[int, tuple[int, Any]] = {}  # client -> (round id, role)
        self.bundles: dict[int, bytes] = {}  # client -> the verified public context
        self.desk: KeyHolderDesk | None = None

    def work(self):
        if self._work is None:
            self._work = self.workload()
        return self._work

    # ---- key holder ---------------------------------------------------------------------------------------
    def keyholder(self, op: str, head: dict, body: bytes, outs: list[Outbound]):
        if self.desk is None:
            roster = {c: self.trust.public(c) for c in self.trust.roster}
            self.desk = KeyHolderDesk(make_keyholder(self.settings["scheme"], self.settings["scheme_options"],
                                                     peer_identities=roster))
        if op == "hello":
            return pack("hello", {"role": "keyholder"})
        if op == "context":
            return pack("context", {"signature": self.trust.sign_context(self.desk.context).hex()}, self.desk.context)
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

    # ---- clients ------------------------------------------------------------------------------------------
    def client(self, cid: int, op: str, head: dict, body: bytes, outs: list[Outbound]):
        session = self.sessions.get(cid)
        if session is None:
            session = self.sessions[cid] = ClientSession(cid, self.scheme, self.work().source(cid))
        if op == "hello":
            return pack("hello", {"role": "client", "client_id": cid})
        if op == "setup":
            self.trust.verify_context(body, bytes.fromhex(field(head, "signature", str)))
            self.bundles[cid] = body
            return pack("setup")
        if op == "checkin":
            if session.report is not None and head.get("acked") == session.report[0]:
                session.acknowledged()
            return pack("checkin", session.checkin())
        if op == "model":
            session.on_model(field(head, "version", int), model_from(body))
            return pack("model")
        if op == "task":
            return self._task(session, head, body)
        if op == "mail":
            return self._mail(cid, field(head, "round_id", int), outs)
        if op == "end":
            self.roles.pop(cid, None)
            return pack("end")
        raise MalformedMessageError(f"a client has no op {op!r}")

    def _task(self, session: ClientSession, head: dict, body: bytes):
        cid = session.client_id
        self.roles.pop(cid, None)
        dim = field(field(head, "params", dict), "dim", int)
        round_id, params, vector, weight = session.on_task(head, model_from(body, dim) if body else None)
        context = None
        if self.scheme.needs_keyholder:
            context = self.bundles.get(cid)
            if context is None or context_id(context) != field(params, "context_id", str):
                raise StaleKeyError("the task names a public context this client has not verified")
        cohort = [int(c) for c in field(params, "cohort", list)]
        signed = self.scheme.needs_identities or self.scheme.needs_keyholder
        peers = None
        if "identities" in params:
            trusted = {c: self.trust.identity(c).fingerprint for c in cohort}
            if field(params, "identities", str) != roster_digest(trusted):
                raise AuthenticationError("the task names signing identities that are not the trusted roster's")
            peers = {c: self.trust.public(c) for c in cohort}
        role = session.role(params, context, self.trust.signer(cid) if signed else None, peers)
        self.roles[cid] = (round_id, role)
        return pack("task", {"round_id": round_id}, outs=self._checked(role.start(vector, weight)))

    def _mail(self, cid: int, round_id: int, inbox: list[Outbound]):
        if cid not in self.roles or self.roles[cid][0] != round_id:
            raise StageError(f"client {cid} holds no role for round {round_id} in this process")
        role, sent = self.roles[cid][1], []
        for msg in inbox:
            try:
                sent += role.receive(msg.payload)
            except SecAggError as exc:  # a bad message from the aggregator: refuse it, keep going
                log.warning("client %d refused a message: %s: %s", cid, type(exc).__name__, exc)
        if role.done:
            self.roles.pop(cid, None)
        return pack("mail", {"round_id": round_id, "done": role.done}, outs=self._checked(sent))

    @staticmethod
    def _checked(outs: list[Outbound]) -> list[Outbound]:
        if any(o.to not in (AGGREGATOR, KEYHOLDER) for o in outs):
            raise MalformedMessageError("client roles talk to the aggregator or key holder only")
        return outs


def _serve(settings: dict[str, Any], trust: Trust, workload: Callable[[], Any], msg, context):
    """Answer one message (module-level: its state, :data:`_PROCESS`, survives the runtime re-sending the app)."""
    from flwr.app import Message

    proc = _PROCESS.get(settings["run"])
    if proc is None:
        _PROCESS.clear()
        proc = _PROCESS[settings["run"]] = NodeProcess(settings, trust, workload)
    cfg = context.node_config
    try:
        op, head, body, outs = unpack(msg.content)
        if cfg.get("role") == "keyholder" or (
                "role" not in cfg and int(cfg.get("partition-id", -1)) == settings["clients"]):
            return Message(proc.keyholder(op, head, body, outs), reply_to=msg)
        cid = int(cfg.get("client-id", cfg.get("partition-id", -1)))
        if cid < 0:
            raise AuthenticationError("this node has no client-id")
        return Message(proc.client(cid, op, head, body, outs), reply_to=msg)
    except SecAggError as exc:
        return Message(pack("refused", {"error": type(exc).__name__, "reason": str(exc)}), reply_to=msg)


def make_client_app(settings: dict[str, Any], trust: Trust, workload: Callable[[], Any]):
    """The ClientApp for a run with ``settings`` (scheme, options, a ``run`` token), out-of-band ``trust`` and a
    ``workload`` factory (called once per process)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query("secagg")  # the driver's one message type: protocol.MESSAGE_TYPE
    def handle(msg, context):
        return _serve(settings, trust, workload, msg, context)

    return app
