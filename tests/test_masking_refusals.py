"""Masking roles refuse what they must, with named errors, and lose nothing: after every refusal the same round
still finishes with the right sum. Covers the unmask-request checks that keep the server from ever holding both
shares of one client, signatures (bound to the session), stage order, replays, wrong rounds, unknown senders and
too few survivors. Attacks by a deviating server are in test_masking_malicious."""

from __future__ import annotations

import os

import numpy as np
import pytest

from secagg.errors import AuthenticationError, DecryptionError, DropoutError, DuplicateMessageError, \
    MalformedMessageError, StageError, UnknownClientError, WrongRoundError
from secagg.hazmat import kex
from secagg.hazmat import sign as ed25519
from secagg.masking import MaskingClient, MaskingConfig, MaskingServer
from secagg.masking.messages import AdvertiseKeys, ConsistencyResponse, KeyRoster, \
    ShareDelivery, UnmaskRequest, UnmaskResponse, advertise_payload, survivors_payload
from secagg.messages import Message, decode


def forge(cls: type[Message], **fields: object) -> bytes:
    """Encode a message without running its validation (what a malicious peer can put on the wire)."""
    obj = object.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(obj, k, v)
    return obj.to_bytes()


class Round:
    """A masking round driven stage by stage; ``to_server`` and ``to_clients`` hold the bytes in flight."""

    def __init__(self, n: int = 5, *, sign: bool = True, round_id: int = 3, neighbors: int | None = None,
                 threshold: int | None = 3, seed: bytes = bytes(16)) -> None:
        self.cfg = MaskingConfig(participants=tuple(range(n)), dim=6, neighbors=neighbors, threshold=threshold,
                                 weight_bound=2.0, round_id=round_id, graph_seed=seed)
        self.ids = {i: ed25519.generate() for i in range(n)} if sign else {}
        public = {i: k.public_key() for i, k in self.ids.items()} if sign else None
        self.clients = {i: MaskingClient(i, self.cfg, identity=self.ids.get(i), peer_identities=public)
                        for i in range(n)}
        self.server = MaskingServer(self.cfg, peer_identities=public)
        rng = np.random.default_rng(round_id)
        self.xs = {i: rng.uniform(-1, 1, 6) for i in range(n)}
        self.ws = {i: float(rng.uniform(0.5, 2.0)) for i in range(n)}
        self.to_server = [(i, o.payload) for i, c in self.clients.items() for o in c.start(self.xs[i], self.ws[i])]
        self.to_clients: dict[int, bytes] = {}

    def server_step(self, skip: tuple[int, ...] = ()) -> None:
        """Deliver the clients' messages (except those of ``skip``), closing the stage if someone is silent."""
        outs = []
        for sender, payload in self.to_server:
            if sender not in skip:
                outs += self.server.receive(sender, payload)
        if not outs and not self.server.done:
            outs = self.server.close_stage()
        self.to_server, self.to_clients = [], {o.to: o.payload for o in outs}

    def client_step(self, skip: tuple[int, ...] = ()) -> None:
        self.to_server = [(u, o.payload) for u, p in self.to_clients.items() if u not in skip
                          for o in self.clients[u].receive(p)]
        self.to_clients = {}

    def to_unmask_request(self, dropped_before_input: tuple[int, ...] = (4,)) -> None:
        """Advance until every surviving client holds its UnmaskRequest (in ``to_clients``)."""
        self.server_step()  # rosters
        self.client_step()
        self.server_step()  # deliveries
        self.client_step(skip=dropped_before_input)
        self.server_step()  # consistency requests
        self.client_step()
        self.server_step()  # unmask requests

    def finish(self) -> np.ndarray:
        self.client_step()
        self.server_step()
        assert self.server.done
        alive = sorted(self.server.result().contributors)
        w = np.array([self.ws[i] for i in alive])
        ref = (w[:, None] * np.stack([self.xs[i] for i in alive])).sum(0) / w.sum()
        assert np.max(np.abs(self.server.result().mean - ref)) < 1e-6
        return np.array(alive)


# --- the server never obtains both shares of one client ---------------------------------------------------------

def test_request_with_intersecting_alive_and_dropped_is_refused_by_decoder_and_client() -> None:
    r = Round()
    r.to_unmask_request()
    legit = UnmaskRequest.from_bytes(r.to_clients[0])
    assert legit.alive == (0, 1, 2, 3) and legit.dropped == (4,)
    assert not set(legit.alive) & set(legit.dropped)
    bad = forge(UnmaskRequest, round_id=3, alive=(0, 1, 2, 3, 4), dropped=(4,), signatures={})
    with pytest.raises(MalformedMessageError, match="intersect"):
        decode(bad)
    with pytest.raises(MalformedMessageError):
        r.clients[0].receive(bad)
    assert r.clients[0].stage == "checked"
    assert np.array_equal(r.finish(), [0, 1, 2, 3])


def test_client_refuses_a_request_naming_it_dropped_or_differing_from_the_signed_list() -> None:
    r = Round()
    r.to_unmask_request()
    # The attack: tell client 0's neighbours that 0 dropped (to get its mask-key shares) while others reveal its
    # self-mask share. Client 0 and everyone who signed the real survivor list refuse.
    names_0_dropped = UnmaskRequest(round_id=3, alive=(1, 2, 3), dropped=(0, 4), signatures={}).to_bytes()
    with pytest.raises(MalformedMessageError, match="dropped"):
        r.clients[0].receive(names_0_dropped)
    for u in (1, 2, 3):
        with pytest.raises(MalformedMessageError, match="signed survivor list"):
            r.clients[u].receive(names_0_dropped)
    superset = UnmaskRequest(round_id=3, alive=(0, 1, 2, 3, 4), dropped=(), signatures={}).to_bytes()
    with pytest.raises(MalformedMessageError, match="signed survivor list"):
        r.clients[1].receive(superset)
    assert all(r.clients[u].stage == "checked" for u in range(4))
    r.finish()


def test_legit_responses_reveal_disjoint_shares_and_server_refuses_the_wrong_ones() -> None:
    r = Round()
    r.to_unmask_request()
    r.client_step()
    responses = {u: UnmaskResponse.from_bytes(p) for u, p in r.to_server}
    for resp in responses.values():
        assert set(resp.b_shares) <= {0, 1, 2, 3} and set(resp.s_shares) <= {4}
    with pytest.raises(MalformedMessageError, match="both shares"):
        decode(forge(UnmaskResponse, round_id=3, client_id=1, b_shares={0: b"x"}, s_shares={0: b"x"}))
    good = responses[1]
    wrong = UnmaskResponse(round_id=3, client_id=1, b_shares={v: b for v, b in good.b_shares.items() if v != 4},
                           s_shares={}).to_bytes()  # withholds the dropped client's share: not what was asked
    with pytest.raises(MalformedMessageError, match="wrong clients"):
        r.server.receive(1, wrong)
    moved = forge(UnmaskResponse, round_id=3, client_id=1, b_shares={**good.b_shares, 4: good.s_shares[4]},
                  s_shares={})  # claims the dropped client's share is a self-mask share
    with pytest.raises(MalformedMessageError):
        r.server.receive(1, moved)
    r.server_step()
    assert r.server.done and r.server.result().contributors == (0, 1, 2, 3)


# --- signatures --------------------------------------------------------------------------------------------------

def test_forged_or_altered_advertisements_are_refused_with_authentication_error() -> None:
    r = Round(sign=True)
    ads = {u: AdvertiseKeys.from_bytes(p) for u, p in r.to_server}
    a0 = ads[0]
    other = kex.public_bytes(kex.generate())
    sid = r.cfg.session_id
    altered = AdvertiseKeys(round_id=3, client_id=0, c_pk=a0.c_pk, s_pk=other, signature=a0.signature)
    stranger = ed25519.generate()  # not client 0's identity
    forged = AdvertiseKeys(round_id=3, client_id=0, c_pk=a0.c_pk, s_pk=other,
                           signature=ed25519.sign(stranger, advertise_payload(sid, 0, a0.c_pk, other)))
    unsigned = AdvertiseKeys(round_id=3, client_id=0, c_pk=a0.c_pk, s_pk=a0.s_pk, signature=b"")
    borrowed = AdvertiseKeys(round_id=3, client_id=1, c_pk=a0.c_pk, s_pk=a0.s_pk, signature=a0.signature)
    for sender, msg in ((0, altered), (0, forged), (0, unsigned), (1, borrowed)):
        with pytest.raises(AuthenticationError):
            r.server.receive(sender, msg.to_bytes())
    assert r.server.stage == "advertise"
    r.server_step()
    # a server (or network) that alters a neighbour's key in the roster is caught by the client
    roster = KeyRoster.from_bytes(r.to_clients[0])
    tampered = KeyRoster(round_id=3, client_ids=roster.client_ids, c_pks=roster.c_pks,
                         s_pks=(other,) + roster.s_pks[1:], signatures=roster.signatures).to_bytes()
    with pytest.raises(AuthenticationError):
        r.clients[0].receive(tampered)
    assert r.clients[0].stage == "advertised"
    r.client_step()
    r.server_step()
    r.client_step(skip=(4,))
    r.server_step()
    r.client_step()
    # consistency signatures: the unmask request carries min_signers valid ones, bound to the session
    r.server_step()
    req = UnmaskRequest.from_bytes(r.to_clients[0])
    assert len(req.signatures) >= r.cfg.min_signers
    for u, s in req.signatures.items():
        ed25519.verify(r.ids[u].public_key(), s, survivors_payload(sid, req.alive))
    r.finish()


def test_unmask_request_needs_min_signers_valid_consistency_signatures() -> None:
    r = Round(sign=True)
    r.to_unmask_request()
    req = UnmaskRequest.from_bytes(r.to_clients[0])
    few = dict(list(req.signatures.items())[: r.cfg.min_signers - 1])
    garbage = {**req.signatures, 1: bytes(64)}
    outsider = {**req.signatures, 4: ed25519.sign(r.ids[4], survivors_payload(r.cfg.session_id, req.alive))}
    for sigs, err in ((few, AuthenticationError), (garbage, AuthenticationError), (outsider, UnknownClientError)):
        bad = UnmaskRequest(round_id=3, alive=req.alive, dropped=req.dropped, signatures=sigs).to_bytes()
        with pytest.raises(err):
            r.clients[0].receive(bad)
    r.finish()


def test_forged_consistency_signature_is_refused() -> None:
    r = Round(sign=True)
    r.server_step()
    r.client_step()
    r.server_step()
    r.client_step(skip=(4,))
    r.server_step()
    r.client_step()
    sid = r.cfg.session_id
    survivors = survivors_payload(sid, (0, 1, 2, 3))
    other_round = survivors_payload(Round().cfg.session_id, (0, 1, 2, 3))  # the same list signed for another round
    for sig in (bytes(64), ed25519.sign(r.ids[1], survivors), ed25519.sign(r.ids[2], survivors_payload(sid, (0, 1, 2))),
                ed25519.sign(r.ids[2], other_round)):
        with pytest.raises(AuthenticationError):
            r.server.receive(2, ConsistencyResponse(round_id=3, client_id=2, signature=sig).to_bytes())
    r.server_step()
    r.finish()


# --- stages, replays, rounds, senders ----------------------------------------------------------------------------

def test_out_of_order_calls_raise_stage_error() -> None:
    r, twin = Round(), Round()  # same round id and graph: the twin's messages decode for r's roles
    with pytest.raises(StageError):
        r.clients[0].start(r.xs[0], 1.0)
    with pytest.raises(StageError):
        r.server.result()
    twin.server_step()
    twin.client_step()
    twin.server_step()
    delivery = twin.to_clients[0]
    twin.client_step()
    with pytest.raises(StageError):
        r.clients[0].receive(delivery)  # a share delivery before the key roster
    with pytest.raises(StageError):
        r.server.receive(0, twin.to_server[0][1])  # a masked input during the advertise stage
    late = next(p for u, p in r.to_server if u == 4)
    r.server_step(skip=(4,))  # 4's advertisement missed the deadline: it is out of the round
    with pytest.raises(StageError):
        r.server.receive(4, late)
    r.client_step()
    r.server_step()
    r.client_step()
    r.server_step()
    r.client_step()
    r.server_step()
    r.finish()
    with pytest.raises(StageError):
        r.server.close_stage()
    with pytest.raises(StageError):
        r.clients[0].start(r.xs[0], 1.0)


def test_replayed_wrong_round_and_unknown_sender_messages_are_refused() -> None:
    old, r = Round(round_id=3), Round(round_id=4)
    with pytest.raises(WrongRoundError):
        r.server.receive(0, old.to_server[0][1])  # a replay of the previous round's advertisement
    old.server_step()
    with pytest.raises(WrongRoundError):
        r.clients[0].receive(old.to_clients[0])
    with pytest.raises(UnknownClientError):
        r.server.receive(99, r.to_server[0][1])
    with pytest.raises(AuthenticationError):
        r.server.receive(1, r.to_server[0][1])  # client 1 sending client 0's message
    first = r.to_server[0]
    r.server.receive(*first)
    with pytest.raises(DuplicateMessageError):
        r.server.receive(*first)
    r.to_server = r.to_server[1:]
    r.server_step()
    roster = r.to_clients[0]
    r.client_step()
    with pytest.raises(DuplicateMessageError):
        r.clients[0].receive(roster)
    r.server_step()
    with pytest.raises(UnknownClientError):
        r.clients[1].receive(r.to_clients[0])  # a delivery addressed to client 0
    with pytest.raises(MalformedMessageError):
        r.clients[1].receive(first[1])  # a client-to-server message type
    r.client_step(skip=(4,))
    r.server_step()
    r.client_step()
    r.server_step()
    request = r.to_clients[2]
    r.finish()
    with pytest.raises(DuplicateMessageError):
        r.clients[2].receive(request)  # an unmask request is answered at most once


def test_roster_naming_a_non_neighbour_or_tampered_shares_are_refused() -> None:
    r = Round(n=8, neighbors=4, threshold=3, seed=os.urandom(16))
    r.server_step()
    roster = KeyRoster.from_bytes(r.to_clients[0])
    stranger = min(set(range(8)) - r.cfg.graph[0] - {0})
    ids = tuple(sorted(roster.client_ids[1:] + (stranger,)))
    bad = KeyRoster(round_id=3, client_ids=ids, c_pks=roster.c_pks, s_pks=roster.s_pks,
                    signatures=roster.signatures).to_bytes()
    with pytest.raises(UnknownClientError):
        r.clients[0].receive(bad)
    short = KeyRoster(round_id=3, client_ids=roster.client_ids[:1], c_pks=roster.c_pks[:1], s_pks=roster.s_pks[:1],
                      signatures=roster.signatures[:1]).to_bytes()
    with pytest.raises(DropoutError):
        r.clients[0].receive(short)  # fewer than t - 1 neighbours: nothing safe to share
    r.client_step()
    r.server_step()
    deliv = ShareDelivery.from_bytes(r.to_clients[0])
    v, ct = next(iter(deliv.ciphertexts.items()))
    flipped = ct[:-1] + bytes([ct[-1] ^ 1])
    for cts, err in (({**deliv.ciphertexts, v: flipped}, DecryptionError),
                     ({**deliv.ciphertexts, stranger: ct}, UnknownClientError)):
        with pytest.raises(err):
            r.clients[0].receive(ShareDelivery(round_id=3, recipient=0, ciphertexts=cts).to_bytes())
    assert r.clients[0].stage == "shared"
    r.client_step()
    r.server_step()
    r.client_step()
    r.server_step()
    r.finish()


@pytest.mark.parametrize("stage", range(5))
def test_too_few_survivors_raise_dropout_error_and_no_partial_result(stage: int) -> None:
    r = Round()  # n = 5, t = 3: three silent clients at one stage leave two
    for s in range(5):
        silent = (0, 1, 2) if s == stage else ()
        if s == stage:
            with pytest.raises(DropoutError):
                r.server_step(skip=silent)
            break
        r.server_step()
        r.client_step()
    assert r.server.stage == "failed"
    with pytest.raises(StageError):
        r.server.result()
    with pytest.raises(StageError):
        r.server.close_stage()


def test_configuration_refusals() -> None:
    from secagg.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        MaskingConfig(participants=(0, 1, 2), dim=4, threshold=1)  # t < 2
    with pytest.raises(ConfigurationError, match="threshold >= 7"):
        MaskingConfig(participants=tuple(range(10)), dim=4, neighbors=9, threshold=5, max_corrupt=4)  # t < C+e+2
    with pytest.raises(ConfigurationError):
        MaskingConfig(participants=tuple(range(10)), dim=4, threshold=True)  # a bool is not a threshold
    with pytest.raises(ConfigurationError):
        MaskingConfig(participants=tuple(range(10)), dim=4, round_nonce=bytes(8))
    with pytest.raises(ConfigurationError):
        MaskingConfig(participants=tuple(range(10)), dim=4, neighbors=4, threshold=6)  # t > k + 1
    with pytest.raises(ConfigurationError):
        MaskingConfig(participants=(0,), dim=4)
    with pytest.raises(ConfigurationError):
        MaskingConfig(participants=(0, 0, 1), dim=4)
    with pytest.raises(ConfigurationError):
        MaskingClient(7, MaskingConfig(participants=(0, 1), dim=4))


def test_roles_refuse_corrupted_bytes_at_every_stage_and_carry_on() -> None:
    r = Round(sign=True)
    rng = np.random.default_rng(9)

    def corrupt(p: bytes) -> list[bytes]:
        flip = bytearray(p)
        flip[int(rng.integers(len(p)))] ^= 1 << int(rng.integers(8))
        return [p[:int(rng.integers(len(p)))], bytes(flip), p + b"\x00"]

    for step in range(5):
        for sender, p in r.to_server:
            for bad in corrupt(p):
                with pytest.raises(MalformedMessageError):
                    r.server.receive(sender, bad)
        r.server_step(skip=(4,) if step == 2 else ())
        if r.server.done:
            break
        for u, p in r.to_clients.items():
            for bad in corrupt(p):
                with pytest.raises(MalformedMessageError):
                    r.clients[u].receive(bad)
        r.client_step()
    assert r.server.done  # the fifth server step unmasked
    r.finish()
