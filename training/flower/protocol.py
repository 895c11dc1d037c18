"""What the Flower driver's messages carry, and the out-of-band trust every party holds before the run.

One message type, ``query.secagg``; its content is one ConfigRecord ``secagg`` with ``op`` (str), ``head`` (JSON
str) and ``body`` (bytes), plus, for messages that carry secagg payloads, ``to`` (list of ints) and ``payloads``
(list of bytes). Ops, ServerApp → node: ``hello``, ``setup`` (the key holder's signed public bundle), ``checkin``,
``model`` (asynchronous: train on this version), ``task``, ``mail``, ``end``; → key-holder node: ``context``,
``seed`` (pad seeds relayed from clients), ``finalize``.

Trust (:class:`Trust`): the ServerApp is the untrusted aggregator and relays everything, so nothing it sends may
be trusted for who holds which key. Every party gets, out of band: the key holder's Ed25519 verification key (its
signature on the public bundle is checked by every client, so the aggregator cannot substitute a key it could
decrypt with) and the roster of client signing keys (masking signatures; HE pad seeds are signed, so relayed seeds
cannot be forged). Each client uses only its own signing key. In ``secagg flower sim`` the material is generated
by the CLI and handed to every virtual node (one machine); a deployment reads it from a ``secagg certs init``
directory (:meth:`Trust.from_certs`: CA-certified signing keys; each node holds only its own private key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from secagg.errors import AuthenticationError, MalformedMessageError
from secagg.roles import KEYHOLDER, Outbound
from training.services.pki.certs import role_name
from training.inprocess.secure_sum import LocalIdentity

__all__ = ["Trust", "pack", "unpack", "MESSAGE_TYPE", "CONTEXT_LABEL"]

MESSAGE_TYPE = "query.secagg"
CONTEXT_LABEL = b"secagg/flower/keyholder-context/v1"
STATE_LABEL = b"secagg/flower/node-state/v1"
HELLO_LABEL = b"secagg/flower/hello/v1"


def _hello(run: str, nonce: bytes, party: int, node_id: int) -> bytes:
    """What a node signs to claim ``party`` on Flower node ``node_id``, for the ServerApp's fresh ``nonce``."""
    tag = run.encode()
    return (HELLO_LABEL + len(tag).to_bytes(4, "big") + tag + len(nonce).to_bytes(4, "big") + nonce
            + int(party).to_bytes(8, "big", signed=True) + int(node_id).to_bytes(8, "big"))  # Flower: uint64 ids


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class Trust:
    """Raw Ed25519 keys: the key holder's (``keyholder_private`` only on its node) and each client's."""

    keyholder_public: bytes
    roster: dict[int, bytes]
    keyholder_private: bytes | None = None
    client_private: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def generate(cls, clients: int) -> Trust:
        kh = Ed25519PrivateKey.generate()
        keys = {c: Ed25519PrivateKey.generate() for c in range(clients)}
        raw = lambda k: k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())  # noqa: E731
        return cls(_raw_public(kh.public_key()), {c: _raw_public(k.public_key()) for c, k in keys.items()},
                   raw(kh), {c: raw(k) for c, k in keys.items()})

    @classmethod
    def from_certs(cls, directory: str, clients: int, own: int | None = None) -> Trust:
        """A deployment's trust from a ``secagg certs init`` directory: every ``*.sign.pem`` is checked against
        ``ca.pem`` and the identity it is used for; ``own`` (a client id or KEYHOLDER) also loads that party's
        signing key (``None``: the ServerApp, public material only)."""
        from training.services.pki.certs import Credentials, verify_signing_cert

        d = Path(directory)
        try:
            ca = (d / "ca.pem").read_bytes()
            pems = {c: (d / f"{role_name(c)}.sign.pem").read_bytes() for c in [KEYHOLDER, *range(clients)]}
        except OSError as exc:
            raise AuthenticationError(f"trust material missing in {d}: {exc}") from exc
        keys = {c: _raw_public(verify_signing_cert(ca, pem, c)) for c, pem in pems.items()}
        trust = cls(keys.pop(KEYHOLDER), keys)
        if own is not None:
            signer = Credentials.load(d, own).signer()
            if signer is None or _raw_public(signer.public_key()) != (trust.keyholder_public if own == KEYHOLDER
                                                                      else keys.get(own)):
                raise AuthenticationError(f"the signing key in {d} is not {role_name(own)}'s certified key")
            raw = signer.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            if own == KEYHOLDER:
                trust.keyholder_private = raw
            else:
                trust.client_private[own] = raw
        return trust

    def state_key(self, party: int) -> bytes:
        """The 32-byte key ``party`` seals its node state with (HKDF of its own signing key: only it holds it)."""
        raw = self.keyholder_private if party == KEYHOLDER else self.client_private.get(party)
        if raw is None:
            raise AuthenticationError(f"this node holds no signing key for {role_name(party)}")
        return HKDF(hashes.SHA256(), 32, salt=None, info=STATE_LABEL).derive(raw)

    def sign_hello(self, party: int, run: str, nonce: bytes, node_id: int) -> bytes:
        """``party``'s Ed25519 signature binding it to Flower node ``node_id`` for this run and nonce."""
        raw = self.keyholder_private if party == KEYHOLDER else self.client_private.get(party)
        if raw is None:
            raise AuthenticationError(f"this node holds no signing key for {role_name(party)}")
        return Ed25519PrivateKey.from_private_bytes(raw).sign(_hello(run, nonce, party, node_id))

    def verify_hello(self, party: int, run: str, nonce: bytes, node_id: int, signature: bytes) -> None:
        """AuthenticationError unless ``signature`` is ``party``'s (trusted key) over this run, nonce and node."""
        from cryptography.exceptions import InvalidSignature

        key = self.keyholder_public if party == KEYHOLDER else self.roster.get(party)
        if key is None:
            raise AuthenticationError(f"{role_name(party)} is not in the trusted roster")
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, _hello(run, nonce, party, node_id))
        except InvalidSignature as exc:
            raise AuthenticationError(f"node {node_id}'s claim to be {role_name(party)} is not signed by its "
                                      "certified key") from exc

    def signer(self, cid: int) -> Ed25519PrivateKey:
        if cid not in self.client_private:
            raise AuthenticationError(f"this node holds no signing key for client {cid}")
        return Ed25519PrivateKey.from_private_bytes(self.client_private[cid])

    def public(self, cid: int) -> Ed25519PublicKey:
        if cid not in self.roster:
            raise AuthenticationError(f"client {cid} is not in the trusted roster")
        return Ed25519PublicKey.from_public_bytes(self.roster[cid])

    def identity(self, cid: int) -> LocalIdentity:
        return LocalIdentity.of(self.public(cid))

    def sign_context(self, context: bytes) -> bytes:
        if self.keyholder_private is None:
            raise AuthenticationError("only the key holder signs its public context")
        return Ed25519PrivateKey.from_private_bytes(self.keyholder_private).sign(CONTEXT_LABEL + context)

    def verify_context(self, context: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature

        try:
            Ed25519PublicKey.from_public_bytes(self.keyholder_public).verify(signature, CONTEXT_LABEL + context)
        except InvalidSignature as exc:
            raise AuthenticationError("the public context is not signed by the trusted key holder") from exc


def pack(op: str, head: dict | None = None, body: bytes = b"", outs: list[Outbound] | None = None):
    """A ``RecordDict`` with one ConfigRecord ``secagg``."""
    from flwr.app import ConfigRecord, RecordDict

    rec: dict[str, Any] = {"op": op, "head": json.dumps(head or {}), "body": body}
    if outs:
        rec |= {"to": [int(o.to) for o in outs], "payloads": [bytes(o.payload) for o in outs]}
    return RecordDict({"secagg": ConfigRecord(rec)})


def unpack(content, max_bytes: int = 1 << 30) -> tuple[str, dict, bytes, list[Outbound]]:
    """(op, head, body, outbound messages) of a message's content; MalformedMessageError for anything else."""
    try:
        rec = content["secagg"]
        op, head, body = rec["op"], json.loads(rec["head"]), rec["body"]
        to, payloads = list(rec.get("to", [])), list(rec.get("payloads", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessageError(f"not a secagg message: {exc!r}") from exc
    if not (isinstance(op, str) and isinstance(head, dict) and isinstance(body, bytes) and len(to) == len(payloads)
            and all(type(t) is int for t in to) and all(isinstance(p, bytes) for p in payloads)):
        raise MalformedMessageError("malformed secagg record")
    if len(body) + sum(len(p) for p in payloads) > max_bytes:
        raise MalformedMessageError("secagg record too large")
    return op, head, body, [Outbound(t, p) for t, p in zip(to, payloads)]
