"""Each strategy through the real secure path (CKKS, masking and packed BFV) against a plaintext reference of its formula,
and the loss-weighted strategy's privacy: no message or object the aggregator/key holder sees holds a client's
loss or loss weight."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from training.engine.rules import BufferedAsync, FedAvg, GradientAggregation, LossWeighted, RoundInfo, staleness_weight
from training.inprocess.federation import Federation
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate

DIM = 40
ATOL = 2e-5
SCHEMES = ["ckks", "masking", "packed"]


@pytest.fixture(scope="module")
def ckks_sum():
    return SecureSum("ckks", params="default", min_contributors=2)


def _secure(scheme, ckks_sum):
    if scheme == "packed":
        return SecureSum("packed", clip=1.0, max_cohort=3)
    return ckks_sum if scheme == "ckks" else SecureSum("masking", clip=1.0)


def _clients(rng, w, k=3):
    """Local models w_i = w + Δ_i with small deltas (inside the clip, so clipping is the identity)."""
    deltas = [rng.uniform(-0.05, 0.05, DIM) for _ in range(k)]
    n = [int(x) for x in rng.integers(5, 200, k)]
    losses = [float(x) for x in rng.uniform(2.0, 6.0, k)]
    return deltas, n, losses


def _updates(deltas, n, losses, base=0):
    return {i: ClientUpdate(i, d, n[i], losses[i], base_version=base) for i, d in enumerate(deltas)}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fedavg_matches_formula_1(scheme, ckks_sum):
    rng = np.random.default_rng(1)
    w = rng.normal(size=DIM)
    deltas, n, losses = _clients(rng, w)
    fed = Federation(w, FedAvg(), _secure(scheme, ckks_sum), [0, 1, 2], update_clip=1.0)
    fed.aggregate(_updates(deltas, n, losses))
    local = [w + d for d in deltas]
    ref = sum(n[i] / sum(n) * local[i] for i in range(3))
    assert np.allclose(fed.global_vec, ref, atol=ATOL, rtol=0)
    assert not np.allclose(ref, np.mean(local, axis=0), atol=1e-3)  # the weights matter in this instance


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loss_weighted_matches_formula_2(scheme, ckks_sum):
    rng = np.random.default_rng(2)
    w = rng.normal(size=DIM)
    deltas, n, losses = _clients(rng, w)
    fed = Federation(w, LossWeighted(), _secure(scheme, ckks_sum), [0, 1, 2], update_clip=1.0)
    fed.loss_reference = 4.0  # public shift; softmax is shift-invariant
    fed.aggregate(_updates(deltas, n, losses))
    alpha = np.exp(-np.array(losses)) / np.exp(-np.array(losses)).sum()
    ref = sum(alpha[i] * (w + deltas[i]) for i in range(3))
    assert np.allclose(fed.global_vec, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradient_sgd_matches_formula_3(scheme, ckks_sum):
    rng = np.random.default_rng(3)
    w = rng.normal(size=DIM)
    deltas, n, losses = _clients(rng, w)
    eta = 0.7
    fed = Federation(w, GradientAggregation(lr=eta), _secure(scheme, ckks_sum), [0, 1, 2], update_clip=1.0)
    fed.aggregate(_updates(deltas, n, losses))
    grads = [w - (w + d) for d in deltas]  # pseudo-gradient ∇w_i = w^t − w_i
    ref = w - eta * sum(n[i] / sum(n) * grads[i] for i in range(3))
    assert np.allclose(fed.global_vec, ref, atol=ATOL, rtol=0)


def test_gradient_adam_matches_reference_adam_over_rounds(ckks_sum):
    rng = np.random.default_rng(4)
    w = rng.normal(size=DIM)
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-3
    fed = Federation(w, GradientAggregation(lr=lr, optimizer="adam", betas=(b1, b2), eps=eps), ckks_sum, [0, 1, 2],
                     update_clip=1.0)
    ref, m, v = w.copy(), np.zeros(DIM), np.zeros(DIM)
    for t in range(1, 4):
        deltas, n, losses = _clients(rng, ref)
        fed.aggregate(_updates(deltas, n, losses, base=fed.version))
        g = sum(n[i] / sum(n) * -deltas[i] for i in range(3))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        ref = ref - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        assert np.allclose(fed.global_vec, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_buffered_async_matches_formula_4_with_staleness(scheme, ckks_sum):
    rng = np.random.default_rng(5)
    w0 = rng.normal(size=DIM)
    alpha = 0.8
    strat = BufferedAsync(buffer_size=2, alpha=alpha, staleness="polynomial", a=0.5)
    fed = Federation(w0, strat, _secure(scheme, ckks_sum), [0, 1, 2], update_clip=1.0)
    d, n, L = _clients(rng, w0)
    # step 1: clients 0 and 1 arrive, both trained from version 0
    fed.aggregate({0: ClientUpdate(0, d[0], n[0], L[0], base_version=0),
                   1: ClientUpdate(1, d[1], n[1], L[1], base_version=0)})
    w1 = w0 + (alpha * ((w0 + d[0]) - w0) + alpha * ((w0 + d[1]) - w0)) / 2
    assert np.allclose(fed.global_vec, w1, atol=ATOL, rtol=0)
    # step 2: client 2 is stale (trained from version 0, τ = 1); client 0 trained from version 1
    e0 = rng.uniform(-0.05, 0.05, DIM)
    fed.aggregate({2: ClientUpdate(2, d[2], n[2], L[2], base_version=0),
                   0: ClientUpdate(0, e0, n[0], L[0], base_version=1)})
    a_stale = alpha * staleness_weight(1, "polynomial", 0.5)
    w2 = w1 + (a_stale * ((w0 + d[2]) - w1) + alpha * ((w1 + e0) - w1)) / 2
    assert np.allclose(fed.global_vec, w2, atol=ATOL, rtol=0)


def test_async_with_buffer_of_one_is_formula_4_exactly_and_secure_paths_refuse_a_lone_update(ckks_sum):
    """K = 1 is formula 4 itself, but a secure sum of one update is that update: both schemes refuse it, so the
    strategy's server half is checked on the plaintext aggregate a one-client round would produce."""
    from secagg.errors import SecAggError
    from secagg.roles import AggregateResult

    rng = np.random.default_rng(6)
    w, w_stale = rng.normal(size=DIM), rng.normal(size=DIM)
    strat = BufferedAsync(buffer_size=1, alpha=0.3, staleness="hinge", a=0.5, b=0)
    strat.observe_version(0, w_stale)
    strat.observe_version(1, w)
    local = w_stale + rng.uniform(-0.05, 0.05, DIM)  # trained from version 0, arriving at version 1 (τ = 1)
    c = strat.encode(ClientUpdate(0, local - w_stale, 1, 1.0, base_version=0), RoundInfo(2, 1, {0: 0}))
    a = 0.3 * staleness_weight(1, "hinge", a=0.5, b=0)
    assert c.weight == pytest.approx(a)
    agg = AggregateResult(c.weight * c.vector, c.weight, (0,))
    assert np.allclose(strat.apply(w, agg, RoundInfo(2, 1, {0: 0})), w + a * (local - w), atol=1e-12)
    for secure in (ckks_sum, SecureSum("masking", clip=1.0), SecureSum("packed", clip=1.0, max_cohort=2)):
        fed = Federation(w, BufferedAsync(buffer_size=1), secure, [0, 1], update_clip=1.0)
        with pytest.raises(SecAggError):
            fed.aggregate({0: ClientUpdate(0, local - w, 1, 1.0)})
        assert np.array_equal(fed.global_vec, w) and fed.version == 0


def _float_patterns(x: float) -> list[bytes]:
    return [struct.pack("<d", x), struct.pack(">d", x), struct.pack("<f", x), struct.pack(">f", x)]


def _find_close_floats(obj, targets, seen=None, depth=0) -> list[float]:
    """Every float reachable from ``obj`` (attributes, containers, arrays) within 1e-9 of a target."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return []
    seen.add(id(obj))
    hits: list[float] = []
    if isinstance(obj, (float, np.floating)):
        return [float(obj)] if any(abs(float(obj) - t) <= 1e-9 * max(1.0, abs(t)) for t in targets) else []
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.size:
            flat = obj.ravel().astype(np.float64)
            for t in targets:
                hits += [float(v) for v in flat[np.abs(flat - t) <= 1e-9 * max(1.0, abs(t))][:1]]
        return hits
    if isinstance(obj, (bytes, bytearray, str, int, type(None))):
        return []
    if isinstance(obj, dict):
        for k, v in obj.items():
            hits += _find_close_floats(k, targets, seen, depth + 1) + _find_close_floats(v, targets, seen, depth + 1)
        return hits
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            hits += _find_close_floats(v, targets, seen, depth + 1)
        return hits
    for attr in getattr(obj, "__dict__", {}).values():
        hits += _find_close_floats(attr, targets, seen, depth + 1)
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            hits += _find_close_floats(getattr(obj, slot), targets, seen, depth + 1)
    return hits


@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_party_but_the_client_sees_an_individual_loss(scheme, ckks_sum):
    rng = np.random.default_rng(7)
    w = rng.normal(size=DIM)
    deltas, n, losses = _clients(rng, w)
    shift = 4.0
    secure = _secure(scheme, ckks_sum)
    blobs = []
    for _ in range(2):  # the same round twice: fresh keys, masks and ciphertexts, the same losses
        seen: list[tuple[str, bytes]] = []
        fed = Federation(w, LossWeighted(), secure, [0, 1, 2], update_clip=1.0,
                         observer=lambda party, payload: seen.append((party, bytes(payload))))
        fed.loss_reference = shift
        fed.aggregate(_updates(deltas, n, losses))
        assert {p for p, _ in seen} >= ({"aggregator", "keyholder"} if scheme == "ckks" else {"aggregator"})
        blobs.append(b"".join(payload for _, payload in seen))
        assert len(blobs[-1]) > 1000
    secrets = []
    for L in losses:
        secrets += [L, math.exp(-L), math.exp(-(L - shift))]
    patterns = [p for s in secrets for p in _float_patterns(s)]
    # an 8-byte pattern never appears by chance; a 4-byte one may (about len/2^32 per pattern) in one round's
    # random-looking bytes, but a leak would be in every round
    for p in patterns:
        assert not all(p in b for b in blobs) if len(p) == 4 else p not in blobs[0] + blobs[1]
    # the scan can fail: the same patterns are found once a loss is embedded in the stream
    assert any(p in blobs[0] + struct.pack("<f", losses[1]) for p in patterns)
    # objects held by the aggregator and key holder after the round hold no individual loss or weight
    clients, agg, fin = secure.last_roles
    assert _find_close_floats(agg, secrets) == []
    if fin is not None:
        assert _find_close_floats(fin, secrets) == []
    # nor does the server: its round reports and strategy state
    assert _find_close_floats(fed.history, secrets) == [] and _find_close_floats(fed.strategy, secrets) == []
    assert _find_close_floats(fed.history + [{"x": losses[2]}], secrets) != []  # the object scan can fail too
    alpha = np.exp(-np.array(losses)) / np.exp(-np.array(losses)).sum()
    assert np.allclose(fed.global_vec, sum(alpha[i] * (w + deltas[i]) for i in range(3)), atol=ATOL, rtol=0)


def test_packed_sum_needs_a_cohort_bound_and_uploads_a_fraction_of_ckks(ckks_sum):
    from secagg.errors import MalformedUpdateError
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match="max_cohort"):
        SecureSum("packed")
    rng = np.random.default_rng(8)
    vecs = [rng.uniform(-1, 1, 5000) for _ in range(3)]
    ws = [3.0, 1.0, 2.0]
    updates = {i: ClientUpdate(i, v, int(w), 1.0) for i, (v, w) in enumerate(zip(vecs, ws))}
    packed = Federation(np.zeros(5000), FedAvg(), SecureSum("packed", clip=1.0, max_cohort=3), [0, 1, 2])
    rep = packed.aggregate(updates)
    assert np.allclose(packed.global_vec, sum(w * v for v, w in zip(vecs, ws)) / 6.0, atol=1e-4, rtol=0)
    assert rep.record.result.total_weight == pytest.approx(6.0, abs=1e-4)
    ckks = Federation(np.zeros(5000), FedAvg(), ckks_sum, [0, 1, 2]).aggregate(updates)
    assert rep.total_up < 0.3 * ckks.total_up
    with pytest.raises(MalformedUpdateError):  # what the lanes hold is w·x: within clip·weight_bound
        packed.aggregate({0: ClientUpdate(0, 4 * vecs[0], 1, 1.0, base_version=1), 1: updates[1]})


def test_in_place_server_steps_equal_the_textbook_expressions_bit_for_bit() -> None:
    """FedAvg, loss-weighted and gradient-SGD steps build the new model with one temporary (the mean, scaled and
    added in place); the values are exactly those of ``w + lr * mean`` / ``w - lr * g``."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from secagg.roles import AggregateResult

    @settings(max_examples=40, deadline=None)
    @given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.floats(1e-3, 10.0), st.floats(0.1, 50.0))
    def check(seed: int, dim: int, lr: float, total: float) -> None:
        rng = np.random.default_rng(seed)
        w, s = rng.normal(size=dim), rng.normal(size=dim) * total
        agg = AggregateResult(weighted_sum=s, total_weight=total, contributors=(0, 1))
        info = RoundInfo(round=0, version=0)
        before = s.copy()
        assert np.array_equal(FedAvg(server_lr=lr).apply(w, agg, info), w + lr * (s / total))
        assert np.array_equal(FedAvg().apply(w, agg, info), w + s / total)
        assert np.array_equal(GradientAggregation(lr=lr, optimizer="sgd").apply(w, agg, info), w - lr * (s / total))
        assert np.array_equal(agg.weighted_sum, before)  # the aggregate itself is never written

    check()
