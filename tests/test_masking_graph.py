"""SecAgg+ graph (k-regular, symmetric, connected, complete when k >= n-1, the same for every party) and the
masking configuration: threshold rules, ring-overflow refusal, and input refusals at the client."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigurationError, MalformedUpdateError
from secagg.masking import MaskingClient, MaskingConfig
from secagg.masking.graph import effective_degree, harary_graph, permutation

seeds = st.binary(min_size=16, max_size=16)


def _connected(nodes: set[int], graph: dict[int, frozenset[int]]) -> bool:
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        for v in graph[todo.pop()] & nodes:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 70), k=st.integers(1, 80), seed=seeds, data=st.data())
def test_graph_is_k_regular_symmetric_and_complete_when_k_at_least_n_minus_1(n, k, seed, data) -> None:
    ids = data.draw(st.lists(st.integers(0, 2**31 - 3), min_size=n, max_size=n, unique=True))
    ke = effective_degree(n, k)
    assert ke == min(n - 1, k + (k % 2 and n % 2))  # n*k must be even for a k-regular graph
    g = harary_graph(ids, ke, seed)
    assert set(g) == set(ids)
    for u, nb in g.items():
        assert len(nb) == ke and u not in nb and nb <= set(ids)
        assert all(u in g[v] for v in nb)
    assert ke == n - 1 or k < n - 1  # k >= n - 1 always gives the complete graph (classic SecAgg)
    if ke == n - 1:
        assert all(g[u] == set(ids) - {u} for u in ids)
    assert harary_graph(list(reversed(ids)), ke, seed) == g  # every party derives the same graph
    assert sorted(permutation(ids, seed)) == sorted(ids)
    if ke >= 2:  # Harary graphs are ke-connected: removing any ke - 1 nodes leaves them connected
        gone = set(data.draw(st.lists(st.sampled_from(ids), unique=True, max_size=ke - 1)))
        assert _connected(set(ids) - gone, g)


def test_graph_depends_on_the_public_seed() -> None:
    ids = list(range(40))
    graphs = {tuple(sorted((u, tuple(sorted(nb))) for u, nb in harary_graph(ids, 6, os.urandom(16)).items()))
              for _ in range(5)}
    assert len(graphs) == 5


def test_graph_refusals() -> None:
    with pytest.raises(ConfigurationError):
        effective_degree(1, 1)
    with pytest.raises(ConfigurationError):
        harary_graph(range(5), 3, bytes(16))  # odd degree with odd n: no such graph
    with pytest.raises(ConfigurationError):
        harary_graph([1, 1, 2], 2, bytes(16))
    with pytest.raises(ConfigurationError):
        permutation(range(4), bytes(8))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), k=st.none() | st.integers(1, 40), t=st.none() | st.integers(0, 42))
def test_config_resolves_degree_threshold_and_malicious_bounds(n, k, t) -> None:
    try:
        cfg = MaskingConfig(participants=tuple(range(n)), dim=3, neighbors=k, threshold=t)
    except ConfigurationError:
        ke = effective_degree(n, k if k is not None else min(n - 1, 2 * math.ceil(math.log2(n)) + 1))
        assert t is not None and not 2 <= t <= ke + 1
        return
    ke = cfg.neighbors
    default_k = min(n - 1, 2 * math.ceil(math.log2(n)) + 1)
    assert ke == effective_degree(n, default_k if k is None else k)
    assert 2 <= cfg.t <= ke + 1
    if t is None:
        assert cfg.t == min(ke + 1, max(2, math.ceil(2 * (ke + 1) / 3)))
    # defaults take the largest corruption bound the threshold allows, with one share-stage dropout when it can
    assert cfg.share_dropouts == min(1, cfg.t - 2) and cfg.max_corrupt == cfg.t - 2 - cfg.share_dropouts
    assert cfg.min_honest_sum == 2 and cfg.min_signers == max(cfg.t, (n + cfg.max_corrupt) // 2 + 1)
    assert cfg.complete == (ke == n - 1)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 5000), ring_bits=st.sampled_from([8, 16, 24, 32]))
def test_configs_where_n_times_max_would_overflow_are_refused(n: int, ring_bits: int) -> None:
    half = (1 << (ring_bits - 1)) - 1
    fits = half // n >= 256  # at least 8 bits of resolution per value after reserving headroom for n clients
    try:
        cfg = MaskingConfig(participants=tuple(range(n)), dim=2, ring_bits=ring_bits, neighbors=2, threshold=2)
    except ConfigurationError:
        assert not fits
        return
    assert fits
    for codec in (cfg.value_codec, cfg.weight_codec):
        assert n * codec.max_level <= half  # the signed sum of n full-scale encodings cannot wrap


def test_client_refuses_bad_inputs_and_weights() -> None:
    cfg = MaskingConfig(participants=(0, 1, 2), dim=4, clip=1.0, weight_bound=2.0)
    ok = np.zeros(4)
    bad_inputs = [np.array([0.0, np.nan, 0, 0]), np.array([0.0, np.inf, 0, 0]), np.zeros(5), np.zeros((2, 2)),
                  np.array([0.0, 1.5, 0, 0])]  # |w x| = 3 > clip * weight_bound
    for x in bad_inputs:
        c = MaskingClient(0, cfg)
        with pytest.raises(MalformedUpdateError):
            c.start(x, 2.0)
        assert c.stage == "init"
    for w in (0.0, -1.0, 2.5, float("nan"), "1"):
        with pytest.raises(MalformedUpdateError):
            MaskingClient(0, cfg).start(ok, w)  # type: ignore[arg-type]
    assert MaskingClient(0, cfg).start(ok, 2.0)  # the boundary weight is accepted
