"""CKKS roles end to end: the verified decrypted aggregate equals an independent numpy weighted mean for both
vetted parameter sets, with dropouts, signed or not; plus the secure-sum plumbing of simulate()."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import secagg
from secagg.he_keyholder import granted_tag_key
from secagg.ckks import PARAMS, CKKSAggregator, CKKSClient, KeyHolder
from secagg.ckks.messages import CKKSAggregate, CKKSContribution
from secagg.errors import ConfigurationError, DropoutError, SecAggError
from secagg.he_pads import PadSeed
from secagg.messages import decode
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregatorRole, ClientRole, FinalizerRole
from secagg.simulation import run_round

ROUNDS = itertools.count(1)


@pytest.fixture(scope="module")
def keyholders() -> dict[str, KeyHolder]:
    return {name: KeyHolder(name) for name in PARAMS}


def _reference(xs: list[np.ndarray], ws: list[float], keep: list[int]) -> tuple[np.ndarray, float]:
    """Σ w_i x_i and Σ w_i over ``keep``, in float64 numpy: the independent computation."""
    w = np.array([ws[i] for i in keep])
    return (w[:, None] * np.stack([xs[i] for i in keep])).sum(0), float(w.sum())


@st.composite
def rounds(draw):
    params = draw(st.sampled_from(sorted(PARAMS)))
    slots = PARAMS[params].slots
    dim = draw(st.one_of(st.integers(1, 40), st.integers(slots - 6, 2 * slots + 1)))
    chunks = -(-(dim + 5) // slots)
    n = draw(st.integers(2, max(2, min(30, 40 // chunks))))
    ws = draw(st.lists(st.floats(0.05, 20.0), min_size=n, max_size=n))
    dropped = draw(st.sets(st.integers(0, n - 1), max_size=n - 2))
    seed = draw(st.integers(0, 2**32 - 1))
    return params, dim, ws, sorted(dropped), seed


@settings(max_examples=40, deadline=None)
@given(rounds())
def test_aggregate_equals_plaintext_weighted_mean(keyholders, case) -> None:
    params, dim, ws, dropped, seed = case
    n, kh, rid = len(ws), keyholders[params], next(ROUNDS)
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-1, 1, dim) for _ in range(n)]
    ctx = kh.public_context()
    clients = {i: CKKSClient(i, ctx, round_id=rid, max_cohort=n, tag_key=granted_tag_key(kh, i)) for i in range(n)}
    agg = CKKSAggregator(ctx, range(n), dim=dim, round_id=rid)
    res = run_round(clients, agg, dict(enumerate(xs)), dict(enumerate(ws)), finalizer=kh,
                    drop_at={d: CKKSContribution.TAG for d in dropped})
    keep = [i for i in range(n) if i not in dropped]
    ref_sum, ref_total = _reference(xs, ws, keep)
    assert res.contributors == tuple(keep) and res.dropped == tuple(dropped)
    assert res.weighted_sum.shape == (dim,) and res.weighted_sum.dtype == np.float64
    assert np.max(np.abs(res.weighted_sum - ref_sum)) <= 1e-5 * ref_total
    assert abs(res.total_weight - ref_total) <= 1e-6 * ref_total
    assert np.max(np.abs(res.mean - ref_sum / ref_total)) <= 1e-5
    assert rid in kh.finalized_rounds


def test_roles_implement_the_protocols(keyholders) -> None:
    kh = keyholders["default"]
    assert isinstance(kh, FinalizerRole)
    assert isinstance(CKKSClient(0, kh.public_context()), ClientRole)
    assert isinstance(CKKSAggregator(kh.public_context(), [0, 1], dim=2), AggregatorRole)


def test_clients_preweight_so_the_aggregator_never_sees_a_weight(keyholders) -> None:
    """The aggregator is built without weights; a client sends its sealed seed to the key holder and its
    contribution to the aggregator, and the weight exists in the clear only in the verified sum."""
    kh, rid = keyholders["default"], next(ROUNDS)
    ctx = kh.public_context()
    xs, ws = [np.full(3, 0.5), np.full(3, -0.25)], [3.0, 5.0]
    agg = CKKSAggregator(ctx, [0, 1], dim=3, round_id=rid)
    outs = []
    for i in range(2):
        seed, contribution = CKKSClient(i, ctx, round_id=rid, tag_key=granted_tag_key(kh, i)).start(xs[i], ws[i])
        assert seed.to == KEYHOLDER and isinstance(decode(seed.payload), PadSeed)
        assert contribution.to == AGGREGATOR and isinstance(decode(contribution.payload), CKKSContribution)
        kh.receive(i, seed.payload)
        outs = agg.receive(i, contribution.payload)
    (to_kh,) = outs
    assert to_kh.to == KEYHOLDER and isinstance(decode(to_kh.payload), CKKSAggregate)
    (back,) = kh.receive(AGGREGATOR, to_kh.payload)
    agg.receive(KEYHOLDER, back.payload)
    res = agg.result()
    assert abs(res.total_weight - 8.0) < 1e-6
    assert np.allclose(res.mean, (3 * 0.5 - 5 * 0.25) / 8, atol=1e-6)


@pytest.mark.parametrize("params,sign", [("default", True), ("default", False), ("add-only", True)])
def test_simulate_weighted_mean_over_survivors(params: str, sign: bool) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, 50) for _ in range(5)]
    ws = [1.0, 2.0, 0.5, 4.0, 3.0]
    out = secagg.simulate(xs, ws, scheme="ckks", dropped=[1, 4], params=params, sign=sign)
    ref_sum, ref_total = _reference(xs, ws, [0, 2, 3])
    assert np.max(np.abs(out - ref_sum / ref_total)) <= 1e-4


def test_simulate_refusals() -> None:
    xs = [np.zeros(4), np.ones(4), np.ones(4)]
    with pytest.raises(DropoutError):
        secagg.simulate(xs, [1.0] * 3, scheme="ckks", dropped=[0, 1])
    with pytest.raises(ConfigurationError, match="unknown ckks options"):
        secagg.simulate(xs, [1.0] * 3, scheme="ckks", weighting="aggregator")  # the aggregator never weights
    with pytest.raises(SecAggError):
        secagg.simulate(xs, [1.0] * 3, scheme="ckks", min_contributors=4)


def test_small_weights_decode_at_fresh_encryption_precision(keyholders) -> None:
    """Survivors carrying a tiny share of the weight: pre-weighted sums keep CKKS's absolute error (~1e-8 per slot,
    at most a few e-8 over 4096 slots), so the mean's error is that divided by Σw = 0.12."""
    kh, rid, n, dim = keyholders["default"], next(ROUNDS), 12, 4096
    rng = np.random.default_rng(11)
    xs = [rng.uniform(0.5, 1, dim) for _ in range(n)]
    ws = [0.05, 0.07] + [20.0] * (n - 2)
    ctx = kh.public_context()
    clients = {i: CKKSClient(i, ctx, round_id=rid, tag_key=granted_tag_key(kh, i)) for i in range(n)}
    agg = CKKSAggregator(ctx, range(n), dim=dim, round_id=rid)
    res = run_round(clients, agg, dict(enumerate(xs)), dict(enumerate(ws)), finalizer=kh,
                    drop_at={d: CKKSContribution.TAG for d in range(2, n)})
    ref_sum, ref_total = _reference(xs, ws, [0, 1])
    assert abs(res.total_weight - ref_total) <= 1e-7
    assert np.max(np.abs(res.mean - ref_sum / ref_total)) <= 1e-6
