"""Partitioners: every sample assigned exactly once, proportions respected; capacity re-balancing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.workload import partition as P
from training.errors import ConfigError
from training.workload.platforms import PlatformProfile

SET = settings(max_examples=60, deadline=None)


def _is_partition(parts, n):
    allidx = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0)
    return allidx.size == n and np.array_equal(np.sort(allidx), np.arange(n))


@SET
@given(st.integers(0, 400), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_iid_assigns_every_sample_once_in_balanced_shares(n, k, seed):
    parts = P.iid(n, k, np.random.default_rng(seed))
    assert len(parts) == k and _is_partition(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@SET
@given(st.lists(st.integers(0, 5), min_size=1, max_size=300), st.integers(1, 8),
       st.floats(0.05, 10.0), st.integers(0, 2**32 - 1))
def test_dirichlet_assigns_every_sample_once(labels, k, alpha, seed):
    parts = P.dirichlet(labels, k, alpha, np.random.default_rng(seed))
    assert len(parts) == k and _is_partition(parts, len(labels))


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    labels = np.repeat(np.arange(10), 200)

    def skew(alpha):
        parts = P.dirichlet(labels, 5, alpha, np.random.default_rng(1))
        # mean over clients of the largest single-label fraction of the client's data
        return np.mean([np.bincount(labels[p], minlength=10).max() / max(len(p), 1) for p in parts if len(p)])

    assert skew(0.05) > 0.4 > 0.2 > skew(100.0)


@SET
@given(st.integers(0, 1000), st.lists(st.floats(0.01, 100.0), min_size=1, max_size=10))
def test_proportional_shares_sum_and_stay_within_one_sample(n, shares):
    counts = P.largest_remainder(n, shares)
    exact = n * np.asarray(shares) / np.sum(shares)
    assert counts.sum() == n and np.all(np.abs(counts - exact) < 1.0)
    parts = P.proportional(n, shares, np.random.default_rng(0))
    assert _is_partition(parts, n) and [len(p) for p in parts] == counts.tolist()


@SET
@given(st.dictionaries(st.text(min_size=1, max_size=6), st.integers(1, 1000), min_size=1, max_size=20),
       st.integers(1, 6))
def test_by_document_keeps_documents_whole_and_uses_each_once(docs, k):
    if len(docs) < k:
        with pytest.raises(ConfigError):
            P.by_document(docs, k)
        return
    groups = P.by_document(docs, k)
    flat = [d for g in groups for d in g]
    assert sorted(flat) == sorted(docs) and all(groups)
    loads = [sum(docs[d] for d in g) for g in groups]
    # LPT guarantee: no client exceeds the lightest by more than the largest document
    assert max(loads) - min(loads) <= max(docs.values())


def test_capacity_partitioner_follows_measured_throughput():
    cp = P.CapacityPartitioner([1.0, 1.0, 1.0], smoothing=1.0, min_share=0.0)
    assert np.allclose(cp.shares(), 1 / 3)
    # client 1 processed the same work three times slower: its share drops to 1/7 of (3 + 1 + 3)
    new = cp.observe([30, 30, 30], [1.0, 3.0, 1.0])
    assert np.allclose(new, [3 / 7, 1 / 7, 3 / 7])
    parts = cp.assign(700)
    assert _is_partition(parts, 700) and [len(p) for p in parts] == [300, 100, 300]


@SET
@given(st.lists(st.floats(0.1, 10.0), min_size=2, max_size=6), st.floats(0.1, 1.0), st.integers(1, 500))
def test_capacity_shares_stay_normalised_and_partition_is_exact(caps, smoothing, n):
    cp = P.CapacityPartitioner(caps, smoothing=smoothing)
    s = cp.observe([10.0] * len(caps), list(reversed(caps)))
    assert abs(s.sum() - 1) < 1e-12 and np.all(s >= cp.min_share / (1 + len(caps) * cp.min_share) - 1e-12)
    assert _is_partition(cp.assign(n, np.random.default_rng(0)), n)


def test_capacity_and_platform_validation():
    with pytest.raises(ConfigError):
        P.CapacityPartitioner([1.0, 0.0])
    with pytest.raises(ConfigError):
        P.CapacityPartitioner([1.0]).observe([1, 2], [1, 1])
    with pytest.raises(ConfigError):
        PlatformProfile("x", speed=0)


def test_platform_model_uses_real_bytes():
    p = PlatformProfile("x", speed=2.0, up_mbps=8.0, down_mbps=16.0, latency_ms=10.0)
    assert p.compute_seconds(3.0) == pytest.approx(1.5)
    # 1 MB up at 8 Mbit/s = 1 s; 2 MB down at 16 Mbit/s = 1 s; 2 messages x 10 ms
    assert p.comm_seconds(1_000_000, 2_000_000, messages=2) == pytest.approx(2.02)
