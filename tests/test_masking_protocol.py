"""Masking rounds end to end (signed, the default): the weighted mean against numpy under dropouts at every stage,
matched against an independent model of who ends in the sum, exactness in the ring, no wrap at the extremes, the
16-bit ring, and uniformity of a masked zero update (chi-square)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from secagg.errors import DropoutError
from secagg.hazmat import sign as ed25519
from secagg.masking import MaskingClient, MaskingConfig, MaskingServer
from secagg.masking.config import MAX_CLIENT_ID
from secagg.masking.messages import AdvertiseKeys, ConsistencyResponse, MaskedInput, ShareKeys, UnmaskResponse
from secagg.roles import AGGREGATOR
from secagg.simulation import run_round

# A client tagged with one of these vanishes instead of sending that message (and everything after it).
STAGE_TAGS = {
    "before advertise": AdvertiseKeys.TAG,
    "after advertise": ShareKeys.TAG,
    "after share keys, before masked input": MaskedInput.TAG,
    "after masked input, before consistency": ConsistencyResponse.TAG,
    "during unmask": UnmaskResponse.TAG,
}
TAGS = sorted(STAGE_TAGS.values())


def _roles(cfg: MaskingConfig, sign: bool = True) -> tuple[dict[int, MaskingClient], MaskingServer]:
    keys = {i: ed25519.generate() for i in cfg.participants} if sign else {}
    public = {i: k.public_key() for i, k in keys.items()} if sign else None
    clients = {i: MaskingClient(i, cfg, identity=keys.get(i), peer_identities=public) for i in cfg.participants}
    return clients, MaskingServer(cfg, peer_identities=public)


def _prune(graph: dict[int, frozenset[int]], alive: set[int], t: int, base: set[int] | None = None,
           e: int = 0) -> set[int]:
    alive = set(alive)
    while True:
        weak = {u for u in alive if len(graph[u] & alive) + 1 < t or
                (base is not None and len((graph[u] & base) - alive) > e)}
        if not weak:
            return alive
        alive -= weak


def expected_contributors(cfg: MaskingConfig, drop: dict[int, int], sign: bool = True) -> set[int] | None:
    """Independent model of the protocol: the clients whose inputs end in the sum, or None if it must fail.

    A client sends the message with tag ``x`` iff it is not dropped at ``x`` or earlier. U2 keeps clients missing
    at most ``share_dropouts`` of their U1 neighbours; a signed round needs ``min_signers`` masked inputs and
    consistency signatures; every secret needs ``t`` responding holders: a client's own share plus those of its
    neighbours that shared keys (U2).
    """
    t, graph = cfg.t, cfg.graph
    sends = lambda tag: {u for u in cfg.participants if drop.get(u, 1 << 30) > tag}  # noqa: E731
    quorum = cfg.min_signers if sign else t
    u1 = _prune(graph, sends(AdvertiseKeys.TAG), t)
    u2 = _prune(graph, u1 & sends(ShareKeys.TAG), t, u1, int(cfg.share_dropouts)) if len(u1) >= t else set()
    u3 = u2 & sends(MaskedInput.TAG)
    u4 = u3 & sends(ConsistencyResponse.TAG)
    u5 = u4 & sends(UnmaskResponse.TAG)
    if min(len(u1), len(u2), len(u5)) < t or min(len(u3), len(u4)) < quorum:
        return None
    if any(len(((graph[u] & u2) | {u}) & u5) < t for u in u3):
        return None
    if any(len(graph[v] & u2 & u5) < t for v in u2 - u3):
        return None
    return u3


def _weighted_mean(xs: dict[int, np.ndarray], ws: dict[int, float], ids: set[int]) -> np.ndarray:
    w = np.array([ws[i] for i in sorted(ids)])
    return (w[:, None] * np.stack([xs[i] for i in sorted(ids)])).sum(0) / w.sum()


def _tolerance(cfg: MaskingConfig, ws: dict[int, float], ids: set[int], mean: np.ndarray) -> float:
    """Worst-case quantization error of the decoded mean: below one step per contributor in each lane."""
    m, big_w = len(ids), sum(ws[i] for i in ids)
    e_sum, e_w = m * cfg.value_codec.resolution, m * cfg.weight_codec.resolution
    return 1.01 * (e_sum + float(np.max(np.abs(mean))) * e_w) / (big_w - e_w) + 1e-12


@st.composite
def rounds(draw, complete: bool):
    n = draw(st.integers(2, 30))
    dim = draw(st.integers(1, 12))
    k = n - 1 if complete else draw(st.integers(1, n - 1))
    k_eff = MaskingConfig(participants=tuple(range(n)), dim=1, neighbors=k).neighbors
    t = draw(st.integers(max(2, (k_eff + 1) // 2 + 1), k_eff + 1))
    ids = draw(st.lists(st.integers(0, MAX_CLIENT_ID), min_size=n, max_size=n, unique=True))
    cfg = MaskingConfig(participants=tuple(ids), dim=dim, neighbors=k, threshold=t, clip=2.0, weight_bound=5.0,
                        graph_seed=draw(st.binary(min_size=16, max_size=16)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # test data only
    xs = {i: rng.uniform(-2, 2, dim) for i in ids}
    ws = {i: float(rng.uniform(0.01, 5.0)) for i in ids}
    limit = n - cfg.t if complete else n
    victims = draw(st.lists(st.sampled_from(ids), unique=True, max_size=limit))
    drop = {v: draw(st.sampled_from(TAGS)) for v in victims}
    return cfg, xs, ws, drop


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=rounds(complete=True), sign=st.booleans())
def test_complete_graph_result_or_dropout_error_matches_model(case, sign: bool) -> None:
    cfg, xs, ws, drop = case
    want = expected_contributors(cfg, drop, sign)
    clients, server = _roles(cfg, sign)
    if want is None:
        with pytest.raises(DropoutError):
            run_round(clients, server, xs, ws, drop_at=drop)
        assert server.stage == "failed"
        return
    res = run_round(clients, server, xs, ws, drop_at=drop)
    assert set(res.contributors) == want
    assert set(res.dropped) == set(cfg.participants) - want
    ref = _weighted_mean(xs, ws, want)
    assert np.max(np.abs(res.mean - ref)) <= _tolerance(cfg, ws, want, ref)
    assert abs(res.total_weight - sum(ws[i] for i in want)) <= len(want) * cfg.weight_codec.resolution


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=rounds(complete=False))
def test_secagg_plus_result_or_dropout_error_matches_model(case) -> None:
    cfg, xs, ws, drop = case
    want = expected_contributors(cfg, drop)
    clients, server = _roles(cfg)
    if want is None:
        with pytest.raises(DropoutError):
            run_round(clients, server, xs, ws, drop_at=drop)
        assert server.stage == "failed"
        return
    res = run_round(clients, server, xs, ws, drop_at=drop)
    assert set(res.contributors) == want
    ref = _weighted_mean(xs, ws, want)
    assert np.max(np.abs(res.mean - ref)) <= _tolerance(cfg, ws, want, ref)


def _tolerated(cfg: MaskingConfig, stage: str) -> int:
    """Dropouts the complete-graph round survives at ``stage`` (signed): the signature quorum bounds everything
    before the unmask stage, ``share_dropouts`` the share stage, ``t`` the unmask stage."""
    return {"before advertise": cfg.n - cfg.min_signers, "after advertise": int(cfg.share_dropouts),
            "after share keys, before masked input": cfg.n - cfg.min_signers,
            "after masked input, before consistency": cfg.n - cfg.min_signers,
            "during unmask": cfg.n - cfg.t}[stage]


@pytest.mark.parametrize("stage", list(STAGE_TAGS))
def test_dropouts_at_each_stage_up_to_what_the_parameters_allow(stage: str) -> None:
    cfg = MaskingConfig(participants=tuple(range(12)), dim=7, neighbors=11, threshold=8, weight_bound=3.0,
                        graph_seed=os.urandom(16))
    assert (cfg.share_dropouts, cfg.max_corrupt, cfg.min_signers) == (1, 5, 9)
    rng = np.random.default_rng(1)
    xs = {i: rng.uniform(-1, 1, 7) for i in range(12)}
    ws = {i: float(rng.uniform(0.1, 3.0)) for i in range(12)}
    victims = (0, 3, 5, 11, 7)
    k = _tolerated(cfg, stage)
    drop = {u: STAGE_TAGS[stage] for u in victims[:k]}
    res = run_round(*_roles(cfg), xs, ws, drop_at=drop)
    want = expected_contributors(cfg, drop)
    assert want is not None and set(res.contributors) == want
    ref = _weighted_mean(xs, ws, want)
    assert np.max(np.abs(res.mean - ref)) <= _tolerance(cfg, ws, want, ref)
    one_more = {u: STAGE_TAGS[stage] for u in victims[:k + 1]}
    assert expected_contributors(cfg, one_more) is None
    with pytest.raises(DropoutError):
        run_round(*_roles(cfg), xs, ws, drop_at=one_more)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 20), dim=st.integers(1, 16), ring_bits=st.sampled_from([16, 24, 32, 48]),
       seed=st.integers(0, 2**32 - 1), n_drop=st.integers(0, 5))
def test_unmasked_ring_sum_equals_sum_of_encodings_exactly(n, dim, ring_bits, seed, n_drop) -> None:
    cfg = MaskingConfig(participants=tuple(range(n)), dim=dim, ring_bits=ring_bits, rounding="deterministic",
                        neighbors=n - 1, weight_bound=4.0, graph_seed=os.urandom(16))
    rng = np.random.default_rng(seed)
    xs = {i: rng.uniform(-1, 1, dim) for i in range(n)}
    ws = {i: float(rng.uniform(0.01, 4.0)) for i in range(n)}
    drop = {u: MaskedInput.TAG for u in range(min(n_drop, n - cfg.min_signers))}
    res = run_round(*_roles(cfg), xs, ws, drop_at=drop)
    alive = sorted(set(range(n)) - set(drop))
    mod = 1 << ring_bits
    vc, wc = cfg.value_codec, cfg.weight_codec
    enc_sum = sum(vc.encode(xs[i], factor=ws[i]).astype(object) for i in alive) % mod  # as the client encodes
    enc_w = sum(int(wc.encode(np.array([ws[i]]))[0]) for i in alive) % mod
    ring = lambda v: np.array([int(x) for x in v], dtype=np.uint64)  # noqa: E731
    # decode_sum is injective on the ring: equal decodings (bit for bit) are equal ring sums
    assert np.array_equal(res.weighted_sum, vc.decode_sum(ring(enc_sum)))
    assert res.total_weight == float(wc.decode_sum(ring([enc_w]))[0])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 30), ring_bits=st.sampled_from([16, 32]), signs=st.integers(0, 2**30))
def test_extreme_inputs_at_full_weight_never_wrap(n: int, ring_bits: int, signs: int) -> None:
    cfg = MaskingConfig(participants=tuple(range(n)), dim=2, ring_bits=ring_bits, clip=1.5, weight_bound=2.0,
                        graph_seed=os.urandom(16))
    s = 1.0 if signs & 1 else -1.0
    xs = {i: np.array([s * 1.5, -s * 1.5 if (signs >> (i % 30)) & 2 else s * 1.5]) for i in range(n)}
    ws = {i: 2.0 for i in range(n)}
    res = run_round(*_roles(cfg), xs, ws)
    ref = _weighted_mean(xs, ws, set(range(n)))
    assert np.max(np.abs(res.mean - ref)) <= _tolerance(cfg, ws, set(range(n)), ref)
    assert res.mean[0] * s > 1.4  # n times the largest encodable value did not wrap to the other sign


def test_sixteen_bit_ring_round() -> None:
    n = 20
    cfg = MaskingConfig(participants=tuple(range(n)), dim=50, ring_bits=16, weight_bound=2.0,
                        graph_seed=os.urandom(16))
    assert cfg.dtype == np.dtype("<u2") and cfg.value_codec.max_level * n <= (1 << 15) - 1
    rng = np.random.default_rng(5)
    xs = {i: rng.uniform(-1, 1, 50) for i in range(n)}
    ws = {i: float(rng.uniform(0.5, 2.0)) for i in range(n)}
    drop = {1: MaskedInput.TAG, 4: ShareKeys.TAG}
    res = run_round(*_roles(cfg), xs, ws, drop_at=drop)
    want = expected_contributors(cfg, drop)
    assert want is not None and set(res.contributors) == want
    ref = _weighted_mean(xs, ws, want)
    assert np.max(np.abs(res.mean - ref)) <= _tolerance(cfg, ws, want, ref)


def _masked_vector_of_zero(cfg: MaskingConfig, who: int) -> np.ndarray:
    """Drive the roles until ``who`` sends its masked input (a zero update at full weight) and return it."""
    clients, server = _roles(cfg)
    zero = np.zeros(cfg.dim)
    inbox = [(i, out) for i, c in clients.items() for out in c.start(zero, cfg.weight_bound)]
    while inbox:
        sender, out = inbox.pop(0)
        if sender == who and out.payload[3] == MaskedInput.TAG:
            return MaskedInput.from_bytes(out.payload).masked
        if out.to == AGGREGATOR:
            inbox += [(AGGREGATOR, o) for o in server.receive(sender, out.payload)]
        else:
            inbox += [(out.to, o) for o in clients[out.to].receive(out.payload)]
    raise AssertionError(f"client {who} never sent a masked input")


@pytest.mark.parametrize("ring_bits,n,k", [(32, 2, 1), (32, 9, 4), (16, 6, 5)])
def test_masked_zero_update_is_uniform_chi_square(ring_bits: int, n: int, k: int) -> None:
    dim, bins = 8191, 256  # 8192 lanes with the weight lane; 32 expected per bin
    cfg = MaskingConfig(participants=tuple(range(n)), dim=dim, ring_bits=ring_bits, neighbors=k,
                        graph_seed=os.urandom(16))
    y = _masked_vector_of_zero(cfg, who=1).astype(np.int64)
    assert y.size == dim + 1 and int(y.max()) < (1 << ring_bits)
    shift = ring_bits - 8
    for lanes in (y >> shift, y & 0xFF):  # high byte and low byte of every lane
        p = chisquare(np.bincount(lanes, minlength=bins)).pvalue
        assert p > 1e-6, p  # false alarm rate 1e-6 per check
    plain = np.concatenate([cfg.value_codec.encode(np.zeros(dim)),
                            cfg.weight_codec.encode(np.array([cfg.weight_bound]))]).astype(np.int64)
    assert chisquare(np.bincount(plain >> shift, minlength=bins)).pvalue < 1e-30  # the statistic has power
