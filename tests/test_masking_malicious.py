"""Masking against an actively malicious server (and clients colluding with it), driven through the real roles.

Each attack is written out as the server would run it. Where a defence refuses a message, the test also checks
that the attack itself has power: with the defence switched off by hand, the same code recovers the victim's input
exactly. Covers restricted share delivery, impersonated neighbours, tampered and inconsistent Shamir shares,
low-order keys, replayed rounds and equivocating survivor lists, plus a property: any one field of any one message
tampered gives the right sum or a named error, never a wrong sum.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.errors import AuthenticationError, ConfigurationError, DropoutError, ReplayError, SecAggError, \
    DuplicateMessageError, MalformedMessageError, VerificationError
from secagg.hazmat import kex, shamir
from secagg.hazmat import sign as ed25519
from secagg.hazmat.prg import SEED_BYTES, expand_mask
from secagg.masking import MaskingClient, MaskingConfig, build_round
from secagg.masking.messages import B_SHARE_BYTES, S_SHARE_BYTES, AdvertiseKeys, ConsistencyRequest, \
    ConsistencyResponse, KeyRoster, MaskedInput, ShareDelivery, ShareKeys, UnmaskRequest, UnmaskResponse, \
    advertise_payload
from secagg.messages import decode
from secagg.simulation import run_round

DIM = 6


def _round(n: int, **options):
    ws = {i: 1.0 for i in range(n)}
    rnd = build_round(range(n), dim=DIM, weights=ws, graph_seed=os.urandom(16), **options)
    rng = np.random.default_rng(n)
    xs = {i: rng.uniform(-1, 1, DIM) for i in range(n)}
    return rnd.clients, rnd.aggregator, xs, ws


def _to_shares(clients, server, xs, ws):
    """Run the honest stages 1-2: returns every client's ShareKeys (the server has delivered nothing yet)."""
    outs = []
    for i, c in clients.items():
        outs += [(i, o) for o in c.start(xs[i], ws[i])]
    rosters = [o for i, out in outs for o in server.receive(i, out.payload)]
    shares = {}
    for o in rosters:
        (out,) = clients[o.to].receive(o.payload)
        shares[o.to] = ShareKeys.from_bytes(out.payload)
    return shares


def _restricted_delivery_attack(clients, cfg: MaskingConfig, shares: dict[int, ShareKeys], target: int = 0):
    """The attack of issue 10.1: deliver to ``target`` the shares of only t-1 neighbours D, declare D dropped,
    collect the survivors' signatures and unmask requests, and unmask ``target`` alone. Returns its input, or
    raises the named error some honest client refuses with."""
    t, rid = cfg.t, cfg.round_id
    roster = sorted(cfg.graph[target])
    d = roster[:t - 1]
    masked = {}
    for u in cfg.participants:  # the target gets the restricted delivery, everyone else an honest one
        senders = d if u == target else sorted(cfg.graph[u])
        deliv = ShareDelivery(round_id=rid, recipient=u, ciphertexts={v: shares[v].ciphertexts[u] for v in senders})
        if u in d:
            continue  # "dropped": the server never hears from them again
        (out,) = clients[u].receive(deliv.to_bytes())
        masked[u] = MaskedInput.from_bytes(out.payload).masked
    alive = tuple(sorted(masked))
    sigs = {}
    for u in alive:
        (out,) = clients[u].receive(ConsistencyRequest(round_id=rid, survivors=alive).to_bytes())
        sigs[u] = ConsistencyResponse.from_bytes(out.payload).signature
    req = UnmaskRequest(round_id=rid, alive=alive, dropped=tuple(d), signatures=sigs).to_bytes()
    resp = {u: UnmaskResponse.from_bytes(clients[u].receive(req)[0].payload) for u in alive}
    b_sh = [shamir.Share.from_bytes(r.b_shares[target][:B_SHARE_BYTES]) for r in resp.values() if target in r.b_shares]
    b = shamir.reconstruct(b_sh, t, SEED_BYTES)
    y = masked[target].copy()
    y -= expand_mask(b, y.size, y.dtype)
    for v in d:
        s_sh = [shamir.Share.from_bytes(r.s_shares[v][:S_SHARE_BYTES]) for r in resp.values() if v in r.s_shares]
        s_v = kex.load_private(shamir.reconstruct(s_sh, t, kex.KEY_BYTES))
        seed = kex.mask_seed(s_v, _advertised[target].s_pk, session=cfg.session_id, u=v, v=target)
        mask = expand_mask(seed, y.size, y.dtype)
        y = y - mask if v > target else y + mask  # target added +PRG for v > target, -PRG for v < target
    return cfg.value_codec.decode_sum(y[:-1])


_advertised: dict[int, AdvertiseKeys] = {}


def _attack(n: int, weaken: bool = False, **options):
    clients, server, xs, ws = _round(n, **options)
    cfg = server.config
    if weaken:  # switch the defences off by hand (no valid config allows it) to show the attack has power
        weak = dataclasses.replace(cfg)
        object.__setattr__(weak, "share_dropouts", cfg.neighbors)
        object.__setattr__(weak, "max_corrupt", 0)  # a smaller signature quorum
        object.__setattr__(weak, "session_id", cfg.session_id)
        for c in clients.values():
            c.config = weak
    _advertised.clear()
    orig = server.receive

    def spy(sender, payload):
        msg = decode(payload)
        if isinstance(msg, AdvertiseKeys):
            _advertised[sender] = msg
        return orig(sender, payload)

    server.receive = spy
    shares = _to_shares(clients, server, xs, ws)
    return _restricted_delivery_attack(clients, cfg, shares), xs[0] * ws[0]


@pytest.mark.parametrize("n,options", [(3, {}), (4, {"neighbors": 2}), (9, {"threshold": 5})])
def test_restricted_share_delivery_is_refused_and_the_attack_has_power(n: int, options: dict) -> None:
    with pytest.raises(DropoutError, match="share_dropouts"):
        _attack(n, **options)
    got, want = _attack(n, weaken=True, **options)
    assert np.max(np.abs(got - want)) < 1e-6  # without the check the target's input comes out alone


@pytest.mark.parametrize("n,neighbors,threshold", [(3, None, None), (4, 2, None), (9, None, 5), (100, None, None)])
def test_parameters_bound_the_smallest_sum_a_malicious_server_learns(n, neighbors, threshold) -> None:
    cfg = MaskingConfig(participants=tuple(range(n)), dim=1, neighbors=neighbors, threshold=threshold)
    assert cfg.t >= cfg.max_corrupt + cfg.share_dropouts + 2 and cfg.min_honest_sum >= 2
    assert cfg.min_signers > (n + cfg.max_corrupt) / 2  # two quorums share an honest signer
    with pytest.raises(ConfigurationError, match="threshold >="):
        MaskingConfig(participants=tuple(range(n)), dim=1, neighbors=neighbors, threshold=threshold,
                      max_corrupt=cfg.t - 1, share_dropouts=0)
    with pytest.raises(ConfigurationError, match="threshold >="):
        MaskingConfig(participants=tuple(range(n)), dim=1, neighbors=neighbors, threshold=threshold,
                      share_dropouts=cfg.t - 1, max_corrupt=0)


def test_signing_is_on_by_default_and_an_impersonated_neighbourhood_is_refused() -> None:
    clients, server, xs, ws = _round(5)  # build_round's default
    assert server._peers is not None and all(c._peers is not None and c._identity is not None for c in clients.values())
    cfg = server.config
    outs = {i: c.start(xs[i], ws[i])[0] for i, c in clients.items()}
    # the server plays every neighbour of client 0 with keys it made itself
    fake = {v: (kex.generate(), kex.generate()) for v in sorted(cfg.graph[0])}
    forged = KeyRoster(round_id=cfg.round_id, client_ids=tuple(fake),
                       c_pks=tuple(kex.public_bytes(c) for c, _ in fake.values()),
                       s_pks=tuple(kex.public_bytes(s) for _, s in fake.values()),
                       signatures=tuple(bytes(64) for _ in fake)).to_bytes()
    with pytest.raises(AuthenticationError):
        clients[0].receive(forged)
    unsigned = KeyRoster(round_id=cfg.round_id, client_ids=tuple(fake), c_pks=decode(forged).c_pks,
                         s_pks=decode(forged).s_pks, signatures=tuple(b"" for _ in fake)).to_bytes()
    with pytest.raises(AuthenticationError):
        clients[0].receive(unsigned)
    assert clients[0].stage == "advertised" and outs


def test_a_low_order_key_excludes_its_sender_and_the_round_goes_on() -> None:
    clients, server, xs, ws = _round(6)
    bad = clients[2]
    real = bad.start

    def low_order_start(update, weight):
        (out,) = real(update, weight)
        msg = AdvertiseKeys.from_bytes(out.payload)
        zero = bytes(32)  # the identity point: every shared secret with it is all-zero
        sig = ed25519.sign(bad._identity, advertise_payload(server.config.session_id, 2, msg.c_pk, zero))
        evil = AdvertiseKeys(round_id=msg.round_id, client_id=2, c_pk=msg.c_pk, s_pk=zero, signature=sig)
        return [dataclasses.replace(out, payload=evil.to_bytes())]

    bad.start = low_order_start
    rejected: list = []
    res = run_round(clients, server, xs, ws, rejected=rejected)
    assert [s for s, _ in rejected] == [2] and 2 in server.excluded
    assert res.contributors == (0, 1, 3, 4, 5)
    ref = np.mean([xs[i] for i in res.contributors], axis=0)
    assert np.max(np.abs(res.mean - ref)) < 1e-6


def test_a_roster_with_a_low_order_mask_key_is_refused_before_anything_is_shared() -> None:
    """An unsigned round (the server's word is the only authority on keys): a roster whose mask key for one
    neighbour is a low-order point is refused by the client before it makes or sends any share."""
    clients, server, xs, ws = _round(5, sign=False)
    outs = [(i, o) for i, c in clients.items() for o in c.start(xs[i], ws[i])]
    rosters = [o for i, out in outs for o in server.receive(i, out.payload)]
    o = next(o for o in rosters if o.to == 0)
    msg = KeyRoster.from_bytes(o.payload)
    evil = dataclasses.replace(msg, s_pks=(bytes(32), *msg.s_pks[1:]))  # the identity point for one neighbour
    with pytest.raises(MalformedMessageError, match="X25519"):
        clients[0].receive(evil.to_bytes())
    assert clients[0].stage == "advertised" and not hasattr(clients[0], "_held")
    (share,) = clients[0].receive(o.payload)  # the honest roster still goes through
    assert ShareKeys.from_bytes(share.payload).client_id == 0


def test_a_replayed_roster_of_an_earlier_round_and_a_reused_session_are_refused() -> None:
    old_clients, old_server, xs, ws = _round(4, round_id=0)
    new_clients, new_server, _, _ = _round(4, round_id=0)  # same round id: only the nonce tells them apart
    assert old_server.config.session_id != new_server.config.session_id
    # give both rounds the same identities, as one federation would
    for c_old, c_new in zip(old_clients.values(), new_clients.values()):
        c_new._identity, c_new._peers = c_old._identity, c_old._peers
    new_server._peers = old_server._peers
    old_outs = [(i, o) for i, c in old_clients.items() for o in c.start(xs[i], ws[i])]
    old_rosters = [o for i, out in old_outs for o in old_server.receive(i, out.payload)]
    for i, c in new_clients.items():
        c.start(xs[i], ws[i])
    for o in old_rosters:
        with pytest.raises(AuthenticationError):
            new_clients[o.to].receive(o.payload)
    seen: set[bytes] = set()
    MaskingClient(0, old_server.config, sessions=seen)
    with pytest.raises(ReplayError):
        MaskingClient(0, old_server.config, sessions=seen)  # the same client asked to run the same session again
    MaskingClient(0, new_server.config, sessions=seen)  # a fresh nonce is a new session


def test_an_equivocating_server_cannot_collect_quorums_for_two_survivor_lists() -> None:
    """The server tells some clients that client 0 survived (they would reveal its self-mask share) and the others
    that it dropped (they would reveal its mask-key share). Each honest client signs one list, and a request needs
    ``min_signers`` signatures of its list: no split of the cohort gives both lists a quorum."""
    n = 9
    clients, server, xs, ws = _round(n)
    cfg = server.config
    shares = _to_shares(clients, server, xs, ws)
    for u in cfg.participants:
        deliv = ShareDelivery(round_id=0, recipient=u, ciphertexts={v: shares[v].ciphertexts[u]
                                                                    for v in sorted(cfg.graph[u])})
        clients[u].receive(deliv.to_bytes())
    lists = {"with 0": tuple(range(n)), "without 0": tuple(range(1, n))}
    groups = {"with 0": range(0, 5), "without 0": range(5, n)}
    sigs = {}
    for name, alive in lists.items():
        req = ConsistencyRequest(round_id=0, survivors=alive).to_bytes()
        sigs[name] = {u: ConsistencyResponse.from_bytes(clients[u].receive(req)[0].payload).signature
                      for u in groups[name]}
    with pytest.raises(DuplicateMessageError):  # a client that signed one list signs no other
        clients[0].receive(ConsistencyRequest(round_id=0, survivors=lists["without 0"]).to_bytes())
    assert max(len(s) for s in sigs.values()) < cfg.min_signers
    for name, alive in lists.items():
        dropped = () if name == "with 0" else (0,)
        req = UnmaskRequest(round_id=0, alive=alive, dropped=dropped, signatures=sigs[name]).to_bytes()
        for u in groups[name]:
            with pytest.raises(AuthenticationError, match="consistency signatures"):
                clients[u].receive(req)
            assert clients[u].stage == "checked"  # nothing revealed


def _tamper_share(resp: UnmaskResponse, rng: np.random.Generator) -> UnmaskResponse:
    field = "b_shares" if resp.b_shares and (not resp.s_shares or rng.random() < 0.5) else "s_shares"
    shares = dict(getattr(resp, field))
    owner = sorted(shares)[int(rng.integers(len(shares)))]
    raw = bytearray(shares[owner])
    limb = int(rng.integers((B_SHARE_BYTES if field == "b_shares" else S_SHARE_BYTES) - 6) // 4)
    val = int.from_bytes(raw[6 + 4 * limb:10 + 4 * limb], "little")
    raw[6 + 4 * limb:10 + 4 * limb] = ((val + int(rng.integers(1, 1 << 12))) % shamir.PRIME).to_bytes(4, "little")
    return dataclasses.replace(resp, **{field: {**shares, owner: bytes(raw)}})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 12), seed=st.integers(0, 2**32 - 1), dropped=st.integers(0, 1))
def test_a_holder_adding_a_small_value_to_a_revealed_share_never_makes_the_sum_wrong(n, seed, dropped) -> None:
    rng = np.random.default_rng(seed)
    clients, server, xs, ws = _round(n)
    victim = int(rng.integers(n))
    real = clients[victim].receive

    def tampering(payload):
        outs = real(payload)
        if outs and outs[0].payload[3] == UnmaskResponse.TAG:
            resp = UnmaskResponse.from_bytes(outs[0].payload)
            if resp.b_shares or resp.s_shares:
                return [dataclasses.replace(outs[0], payload=_tamper_share(resp, rng).to_bytes())]
        return outs

    clients[victim].receive = tampering
    drop = {n - 1: MaskedInput.TAG} if dropped and n - 1 != victim else {}
    rejected: list = []
    try:
        res = run_round(clients, server, xs, ws, drop_at=drop, rejected=rejected)
    except DropoutError:
        return  # too few honest holders left: a named error, nothing released
    assert any(isinstance(e, VerificationError) for _, e in rejected)
    ref = np.mean([xs[i] for i in res.contributors], axis=0)
    assert np.max(np.abs(res.mean - ref)) < 1e-6


def test_a_dealer_with_inconsistent_shares_gives_a_named_error_or_the_right_sum() -> None:
    outcomes = set()
    for attempt in range(6):
        clients, server, xs, ws = _round(7)
        dealer = clients[attempt % 7]
        real_split = shamir.split

        def bad_split(secret, threshold, points, _k=attempt):
            out = real_split(secret, threshold, points)
            k = _k % len(out)
            y = out[k].y.copy()
            y[0] = (y[0] + 1) % shamir.PRIME  # one holder's share is off the polynomial; commitments match it
            return out[:k] + [shamir.Share(out[k].x, y)] + out[k + 1:]

        real_roster = dealer._on_roster

        def dealing(msg, _bad=bad_split, _real=real_roster):
            shamir.split = _bad
            try:
                return _real(msg)
            finally:
                shamir.split = real_split

        dealer._on_roster = dealing  # the client dispatches by handler name, so the instance attribute wins
        try:
            res = run_round(clients, server, xs, ws)
        except VerificationError as exc:
            assert "dealt shares" in str(exc)
            outcomes.add("refused")
            continue
        ref = np.mean([xs[i] for i in res.contributors], axis=0)
        assert np.max(np.abs(res.mean - ref)) < 1e-6
        outcomes.add("right")
    assert "refused" in outcomes


_FIELDS = {ShareKeys: ("ciphertexts", "commitments", "seed_commitment"), MaskedInput: ("masked",),
           ConsistencyResponse: ("signature",), UnmaskResponse: ("b_shares", "s_shares"),
           AdvertiseKeys: ("c_pk", "s_pk", "signature")}


def _mutate(value, rng: np.random.Generator):
    if isinstance(value, bytes) and value:
        raw = bytearray(value)
        raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        return bytes(raw)
    if isinstance(value, dict) and value:
        k = sorted(value)[int(rng.integers(len(value)))]
        return {**value, k: _mutate(value[k], rng)}
    if isinstance(value, np.ndarray):
        out = value.copy()
        out[int(rng.integers(out.size))] ^= out.dtype.type(1 << int(rng.integers(8)))
        return out
    return value


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 10), seed=st.integers(0, 2**32 - 1))
def test_one_tampered_field_of_one_message_gives_the_right_sum_or_a_named_error(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    clients, server, xs, ws = _round(n)
    who = int(rng.integers(n))
    kind = list(_FIELDS)[int(rng.integers(len(_FIELDS)))]
    field = _FIELDS[kind][int(rng.integers(len(_FIELDS[kind])))]
    done = []

    def wrap(send):
        def inner(*args):
            outs = send(*args)
            if outs and not done and outs[0].payload[3] == kind.TAG:
                msg = decode(outs[0].payload)
                bad = object.__new__(kind)
                for f in dataclasses.fields(kind):
                    object.__setattr__(bad, f.name, getattr(msg, f.name))
                object.__setattr__(bad, field, _mutate(getattr(msg, field), rng))
                done.append(True)
                return [dataclasses.replace(outs[0], payload=bad.to_bytes())]
            return outs
        return inner

    clients[who].start = wrap(clients[who].start)
    clients[who].receive = wrap(clients[who].receive)
    try:
        res = run_round(clients, server, xs, ws)
    except SecAggError:
        return  # a named error; nothing partial released
    ref = np.mean([xs[i] for i in res.contributors], axis=0)
    if kind is MaskedInput and done:
        # what a client masks is its own input: flipping a bit of it changes only its own contribution (no range
        # proofs bound what a client contributes), so the sum is the sum of what was sent
        assert who in res.contributors
        return
    assert np.max(np.abs(res.mean - ref)) < 1e-6
