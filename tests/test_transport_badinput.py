"""Bad input over gRPC: each crafted message is refused with its own named error, logged, counted by the aggregator,
and the round still ends with the exact aggregate of the genuine messages."""

from __future__ import annotations

import dataclasses
import json
import logging
import struct

import numpy as np
import pytest

from secagg import errors as E
from secagg.masking.messages import ConsistencyRequest, MaskedInput
from secagg.messages import decode
from secagg.roles import AGGREGATOR
from training.services.pki.certs import Credentials
from training.services.client import ClientAgent
from training.services.loopback import Deployment, FixedSource
from training.services.rpc import Stub, open_channel
from training.services.wire import OversizeMessageError, TransportError, pack, unpack

DIM = 12
LIMIT = 1 << 20

ANY_TAG_KEY = bytes(32)  # these contributions are refused by the aggregator; no key holder checks their tags


class Rogue(ClientAgent):
    """Client 0, honest in the end: before each genuine message it sends ``craft(...)``'s bad envelopes."""

    def __init__(self, *args, craft, **kw) -> None:
        super().__init__(*args, **kw)
        self.craft, self.outcomes, self.stage, self.previous = craft, [], 0, b""

    def _send(self, round_id, outs):
        for out in outs:
            if out.to != AGGREGATOR:  # the pad seed goes to the key holder untouched
                super()._send(round_id, [out])
                continue
            for label, expected, envelope in self.craft(self, round_id, out.payload):
                try:
                    self.stub.stream_unary("Send", envelope, 30.0)
                    self.outcomes.append((label, expected, None))
                except E.SecAggError as exc:
                    self.outcomes.append((label, expected, exc))
            super()._send(round_id, [out])
            self.stage, self.previous = self.stage + 1, out.payload


def _masking_craft(agent: Rogue, rid: int, payload: bytes):
    h = {"client_id": 0, "round_id": rid}
    msg = decode(payload)
    if agent.stage == 0:  # AdvertiseKeys, in stage "advertise"
        return [
            ("size limit", OversizeMessageError, pack(h, b"\0" * (LIMIT + 1))),
            ("round id in the envelope", E.WrongRoundError, pack(h | {"round_id": rid + 1000}, payload)),
            ("round id in the message", E.WrongRoundError,
             pack(h, dataclasses.replace(msg, round_id=rid + 1).to_bytes())),
            ("sender identity in the envelope", E.AuthenticationError, pack(h | {"client_id": 1}, payload)),
            ("sender identity in the message", E.AuthenticationError,
             pack(h, dataclasses.replace(msg, client_id=2).to_bytes())),
            ("stage", E.StageError, pack(h, MaskedInput(rid, 0, 0, np.zeros(DIM + 1, np.uint32)).to_bytes())),
            ("truncated", E.MalformedMessageError, pack(h, payload[:-3])),
            ("not an envelope", E.MalformedMessageError, b"junk"),
            ("server-to-client message", E.MalformedMessageError,
             pack(h, ConsistencyRequest(rid, (0, 1, 2)).to_bytes())),
        ]
    if agent.stage == 1:  # ShareKeys, in stage "share"
        return [("duplicate", E.DuplicateMessageError, pack(h, agent.previous))]
    if agent.stage == 2:  # MaskedInput, in stage "masked"
        return [("shape", E.MalformedMessageError,
                 pack(h, MaskedInput(rid, 0, 0, np.zeros(DIM + 2, np.uint32)).to_bytes())),
                ("a part that does not continue", E.MalformedMessageError,
                 pack(h, MaskedInput(rid, 0, 4, np.zeros(DIM - 3, np.uint32)).to_bytes())),
                ("dtype", E.MalformedMessageError,
                 pack(h, MaskedInput(rid, 0, 0, np.zeros(DIM + 1, np.uint64)).to_bytes()))]
    return []


def _ckks_craft(agent: Rogue, rid: int, payload: bytes):
    from secagg.ckks import CKKSClient, KeyHolder

    h = {"client_id": 0, "round_id": rid}
    other = KeyHolder()  # same parameters, another key
    add_only = KeyHolder(params="add-only")
    theirs = CKKSClient(0, other.public_context(), round_id=rid, tag_key=ANY_TAG_KEY).start(np.zeros(DIM), 1.0)
    small = CKKSClient(0, add_only.public_context(), round_id=rid, tag_key=ANY_TAG_KEY).start(np.zeros(DIM), 1.0)
    forged = dataclasses.replace(decode(small[1].payload), context_id=decode(payload).context_id)
    short = CKKSClient(0, agent.context(), round_id=rid, tag_key=ANY_TAG_KEY).start(np.zeros(DIM - 2), 1.0)
    return [
        ("another key holder's context", E.MalformedMessageError, pack(h, theirs[1].payload)),
        ("ciphertext parameters differ from the session's", E.MalformedMessageError, pack(h, forged.to_bytes())),
        ("shape", E.MalformedMessageError, pack(h, short[1].payload)),
        ("round id in the message", E.WrongRoundError,
         pack(h, dataclasses.replace(decode(payload), round_id=rid + 5).to_bytes())),
    ]


def _packed_craft(agent: Rogue, rid: int, payload: bytes):
    from secagg.packed import PackedClient, PackedKeyHolder, PackedParams

    h = {"client_id": 0, "round_id": rid}
    params = PackedParams(max_cohort=3)  # the deployment's (its cohort bound)
    mine = decode(payload)
    other = PackedKeyHolder(params)  # same parameters, another key
    theirs = PackedClient(0, other.public_context(), params, round_id=rid, tag_key=ANY_TAG_KEY).start(np.zeros(DIM), 1.0)
    short = PackedClient(0, agent.context(), params, weight_bound=4.0, round_id=rid,
                         tag_key=ANY_TAG_KEY).start(np.zeros(DIM - 2), 1.0)
    # (a ciphertext of another plaintext modulus on the same ring looks like any other to the aggregator: the key
    # holder refuses the sum it ends in, test_he_malicious)
    return [
        ("another key holder's session", E.MalformedMessageError, pack(h, theirs[1].payload)),
        ("shape", E.MalformedMessageError, pack(h, short[1].payload)),
        ("unreduced residues", E.MalformedMessageError,
         pack(h, dataclasses.replace(mine, chunks=(b"\xff" * len(mine.chunks[0]),)).to_bytes())),
        ("sender identity in the message", E.AuthenticationError,
         pack(h, dataclasses.replace(mine, client_id=2).to_bytes())),
        ("round id in the message", E.WrongRoundError, pack(h, dataclasses.replace(mine, round_id=rid + 5).to_bytes())),
    ]


def _raw(header_json: bytes) -> bytes:
    return b"ST" + struct.pack("<I", len(header_json)) + header_json


def _bad_requests(dep: Deployment) -> list[tuple[str, type, str, bytes]]:
    """Requests of client 2 refused before any round: non-finite and negative weights, bad privacy reports, signing
    identities that are missing or not its own, unknown rounds, an oversized request."""
    own = Credentials.load(dep.certs, 2)
    ident = {"identity": own.sign_cert.decode()} if dep.scheme.needs_identities else {}
    raw_ident = f',"identity":{json.dumps(ident["identity"])}'.encode() if ident else b""
    bad = [
        ("weight Inf", E.MalformedMessageError, "Checkin", _raw(b'{"weight":1e999' + raw_ident + b"}")),
        ("weight NaN", E.MalformedMessageError, "Checkin", _raw(b'{"weight":NaN' + raw_ident + b"}")),
        ("weight negative", E.MalformedMessageError, "Checkin", pack({"weight": -1.0} | ident)),
        ("weight not a number", E.MalformedMessageError, "Checkin", pack({"weight": "1"} | ident)),
        ("privacy report Inf", E.MalformedMessageError, "Checkin",
         _raw(b'{"weight":1,"report":"r-0123456789","privacy":[{"noise_multiplier":1e999,"sample_rate":0.1,'
              b'"steps":1}]' + raw_ident + b"}")),
        ("privacy report garbage", E.MalformedMessageError, "Checkin",
         pack({"weight": 1.0, "report": "r-0123456789", "privacy": [7]} | ident)),
        ("privacy report without an id", E.MalformedMessageError, "Checkin",
         pack({"weight": 1.0, "privacy": [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1}]} | ident)),
        ("receive for no open round", E.WrongRoundError, "Receive", pack({"round_id": 77})),
        ("oversize request", E.MalformedMessageError, "Checkin", _raw(b'{"weight":1,"pad":"' + b"x" * 70000 + b'"}')),
    ]
    if dep.scheme.needs_identities:
        other = Credentials.load(dep.certs, 1)
        bad += [("no signing identity", E.AuthenticationError, "Checkin", pack({"weight": 1.0})),
                ("another client's signing identity", E.AuthenticationError, "Checkin",
                 pack({"weight": 1.0, "identity": other.sign_cert.decode()})),
                ("a TLS certificate as signing identity", E.AuthenticationError, "Checkin",
                 pack({"weight": 1.0, "identity": own.cert.decode()})),
                ("garbage signing identity", E.AuthenticationError, "Checkin",
                 pack({"weight": 1.0, "identity": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}))]
    return bad


@pytest.mark.parametrize("scheme", ["masking", "ckks", "packed"])
def test_bad_messages_get_named_errors_and_the_round_continues(scheme, caplog):
    rng = np.random.default_rng(11)
    updates = [rng.uniform(-1, 1, DIM) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    sources = {i: FixedSource(updates[i], weights[i]) for i in range(3)}
    craft = {"masking": _masking_craft, "ckks": _ckks_craft, "packed": _packed_craft}[scheme]
    caplog.set_level(logging.WARNING, logger="training.services")
    with Deployment(scheme, sources, DIM, stage_timeout=5.0, max_message_bytes=LIMIT) as dep:
        early = []
        with open_channel(Credentials.load(dep.certs, 2), dep.address, AGGREGATOR) as ch:
            stub = Stub(ch, "secagg.Aggregator", LIMIT)
            for label, expected, method, request in _bad_requests(dep):
                with pytest.raises(E.SecAggError) as info:
                    unpack(stub.unary_stream(method, request, 10.0))
                early.append((label, expected, info.value))
        assert not dep.coordinator.waiting and not dep.coordinator.state.ledgers  # refused requests left no trace
        dep.agents[0].close()
        dep.agents[0] = rogue = dep.agent(0, sources[0], cls=Rogue, craft=craft)
        records = dep.run(timeout=90)
        counts = dep.coordinator.status()["rejections"]
    outcomes = early + rogue.outcomes
    assert len(rogue.outcomes) >= 4
    for label, expected, exc in outcomes:
        assert exc is not None, f"{label}: accepted"
        assert isinstance(exc, expected) and not isinstance(exc, TransportError), f"{label}: {exc!r}"
    assert sum(counts.values()) == len(outcomes)
    for name in {type(exc).__name__ for _, _, exc in outcomes}:
        assert counts[name] == sum(type(exc).__name__ == name for _, _, exc in outcomes)
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == len(outcomes)
    assert [r.status for r in records] == ["done"]
    res = records[0].result
    assert res.contributors == (0, 1, 2)
    expected_mean = sum(w * u for w, u in zip(weights, updates)) / sum(weights)
    assert np.allclose(res.mean, expected_mean, atol=1e-4)
    assert json.dumps(counts)  # the counters are what `Status` reports
