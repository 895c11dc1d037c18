"""A server that tells one client other noise terms than the rest (issue 24, item 5), written as the attacker.

The public terms that set a client's distributed-noise share (``max_weight``: the share is scaled by
``max_weight / w``) or its sensitivity are chosen by the server. The attack: tell one victim a smaller
``max_weight`` so that its share carries less noise than the central accounting assumes, then release a sum
that contains it. Every scheme binds the digest of the round's whole parameters (strategy terms included)
into what the client signs or seals, so the sum is refused with a named error; a term lowered for everybody
below a client's own weight is refused by that client; a cohort below the client's configured noise shares too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import ConfigurationError as PrivacyConfigurationError
from secagg.he_keyholder import granted_tag_key
from secagg.errors import AuthenticationError, ConfigurationError, SecAggError, VerificationError
from secagg.hazmat import sign as ed25519
from secagg.masking.messages import AdvertiseKeys, KeyRoster
from secagg.messages import decode
from secagg.roles import AGGREGATOR, KEYHOLDER
from secagg.terms import NO_TERMS, terms_digest
from training.engine.rules import make_strategy
from training.engine.contribution import contribute
from training.engine.roles import make_keyholder, make_scheme
from training.workload.client_update import ClientUpdate

DIM, IDS = 8, [0, 1, 2, 3]
WEIGHTS = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
TERMS = {"cohort_size": 4, "max_weight": 4.0}


@dataclass(frozen=True)
class _Id:
    key: ed25519.Ed25519PublicKey
    fingerprint: str


def _lowered(params: dict, max_weight: float = 1.0) -> dict:
    """What the attacker hands the victim: the same round with a smaller ``max_weight``."""
    p = copy.deepcopy(params)
    p["strategy"]["max_weight"] = max_weight
    return p


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8)
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=5), st.data())
def test_the_digest_is_one_per_json_value_and_changes_with_any_value(terms, data) -> None:
    once = terms_digest(terms)
    assert once == terms_digest(dict(reversed(list(terms.items()))))  # key order does not matter
    assert len(once) == 32 and once != NO_TERMS
    key = data.draw(st.sampled_from(sorted(terms)))
    changed = dict(terms)
    changed[key] = [terms[key]]  # any other value
    assert terms_digest(changed) != once


def test_int_and_str_keys_and_tuples_agree_after_the_wire_but_nan_is_refused() -> None:
    assert terms_digest({"w": {1: 2.0}, "c": (1, 2)}) == terms_digest({"w": {"1": 2.0}, "c": [1, 2]})
    assert terms_digest({"max_weight": 4.0}) != terms_digest({"max_weight": 4.000001})
    with pytest.raises(SecAggError, match="plain JSON"):
        terms_digest({"max_weight": float("nan")})


def _masking_round():
    scheme = make_scheme("masking", {"clip": 1.0})
    keys = {c: ed25519.generate() for c in IDS}
    idents = {c: _Id(k.public_key(), f"{c:064x}") for c, k in keys.items()}
    params, server = scheme.plan(1, IDS, WEIGHTS, DIM, None, idents, terms=TERMS)
    peers = {c: i.key for c, i in idents.items()}
    return scheme, keys, peers, params, server


def _roster(ads: dict[int, AdvertiseKeys], ids: list[int]) -> bytes:
    """The key roster a server builds from the advertisements of ``ids``, forwarded as they are."""
    return KeyRoster(round_id=1, client_ids=tuple(ids), c_pks=tuple(ads[v].c_pk for v in ids),
                     s_pks=tuple(ads[v].s_pk for v in ids), signatures=tuple(ads[v].signature for v in ids)).to_bytes()


def test_masking_peers_refuse_the_advertisement_of_a_client_told_a_lower_max_weight() -> None:
    scheme, keys, peers, params, _ = _masking_round()
    assert params["strategy"] == TERMS
    told = {c: _lowered(params) if c == 0 else params for c in IDS}
    roles = {c: scheme.client_role(c, told[c], None, keys[c], peers) for c in IDS}
    ads = {c: AdvertiseKeys.from_bytes(roles[c].start(np.full(DIM, 0.1), WEIGHTS[c])[0].payload) for c in IDS}
    # the server forwards every advertisement as it is (it does not check them itself)
    neighbours = sorted(roles[1]._neighbours)
    assert 0 in neighbours
    with pytest.raises(AuthenticationError):
        roles[1].receive(_roster(ads, neighbours))
    # the same roster without the victim's lowered terms is accepted: the refusal is the terms' doing
    honest = scheme.client_role(0, params, None, keys[0], peers)
    ads[0] = AdvertiseKeys.from_bytes(honest.start(np.full(DIM, 0.1), WEIGHTS[0])[0].payload)
    fresh = scheme.client_role(1, params, None, keys[1], peers)
    fresh.start(np.full(DIM, 0.1), WEIGHTS[1])
    assert fresh.receive(_roster(ads, neighbours))


def test_the_masking_server_of_the_honest_terms_drops_the_victim() -> None:
    scheme, keys, peers, params, server = _masking_round()
    victim = scheme.client_role(0, _lowered(params), None, keys[0], peers)
    (ad,) = victim.start(np.full(DIM, 0.1), WEIGHTS[0])
    with pytest.raises(AuthenticationError):
        server.receive(0, ad.payload)


@pytest.fixture(scope="module", params=["ckks", "packed"])
def he(request):
    opts = {"max_cohort": 8} if request.param == "packed" else {}
    scheme = make_scheme(request.param, opts)
    kh = make_keyholder(request.param, opts)
    return scheme, kh, kh.public_context()


def _he_round(he, rid: int, told: dict[int, dict] | None = None):
    scheme, kh, ctx = he
    params, agg = scheme.plan(rid, IDS, WEIGHTS, DIM, ctx, terms=TERMS)
    told = told or {}
    out = None
    for c in IDS:
        role = scheme.client_role(c, told.get(c, params) if not callable(told.get(c)) else told[c](params), ctx,
                                  tag_key=granted_tag_key(kh, c))
        for o in role.start(np.full(DIM, 0.1 * (c + 1)), WEIGHTS[c]):
            if o.to == KEYHOLDER:
                assert kh.receive(c, o.payload) == []
            else:
                out = agg.receive(c, o.payload) or out
    (agg_msg,) = out
    assert agg_msg.to == KEYHOLDER
    return kh, agg_msg.payload


def test_the_key_holder_refuses_a_sum_whose_contributors_were_told_different_terms(he) -> None:
    kh, aggregate = _he_round(he, 11, {0: _lowered})
    with pytest.raises(VerificationError, match="different sets of round terms"):
        kh.receive(AGGREGATOR, aggregate)
    assert 11 in kh.finalized_rounds  # consumed: the round cannot be retried with other seeds
    kh, aggregate = _he_round(he, 12)  # the same round, everyone told the same: released
    (res,) = kh.receive(AGGREGATOR, aggregate)
    assert res.to == AGGREGATOR and decode(res.payload).round_id == 12


def test_a_lowered_max_weight_has_power_and_is_refused_by_the_heavier_clients() -> None:
    """Told ``max_weight`` 1.0, the victim's share would carry a quarter of the noise; told it for everybody,
    every client heavier than 1.0 refuses the round (its sensitivity would exceed the noise's reference)."""
    strat = make_strategy("fedavg")
    upd = ClientUpdate(client_id=0, delta=np.zeros(4096), num_samples=1, loss=0.0)
    kw = {"update_clip": 1.0, "noise_multiplier": 1.0, "noise_shares": 4, "cohort": 4}
    stds = {m: float(np.std(contribute(strat, upd, 0, {"max_weight": m}, **kw).vector)) for m in (1.0, 4.0)}
    assert 3.6 < stds[4.0] / stds[1.0] < 4.4  # the attack's gain, were the terms not bound
    heavy = ClientUpdate(client_id=0, delta=np.zeros(4096), num_samples=3, loss=0.0)
    with pytest.raises(PrivacyConfigurationError, match="reference_weight"):
        contribute(strat, heavy, 0, {"max_weight": 1.0}, **kw)
    with pytest.raises(ConfigurationError, match="smaller than the 4 noise shares"):
        contribute(strat, upd, 0, {"max_weight": 4.0}, **{**kw, "cohort": 3})
