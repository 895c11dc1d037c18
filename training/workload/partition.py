"""Partitioning samples across clients (clouds). Every function returns one index array per client; together they
hold every sample index exactly once (a partition of ``range(n)``).

* :func:`iid` — a uniformly random permutation cut into near-equal shares.
* :func:`dirichlet` — label-skewed non-IID: for each label, shares drawn from Dir(alpha) (small alpha = more skew).
* :func:`by_document` — whole documents (e.g. one play) per client, balanced greedily by size.
* :func:`proportional` and :class:`CapacityPartitioner` — capacity-aware dynamic partitioning (paper §3.1): data
  shares proportional to each platform's measured throughput, re-balanced between rounds from observed step times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from training.errors import ConfigError

__all__ = ["iid", "dirichlet", "by_document", "proportional", "largest_remainder", "CapacityPartitioner"]


def _check_clients(n_clients: int) -> None:
    if n_clients < 1:
        raise ConfigError(f"need at least one client, got {n_clients}")


def largest_remainder(total: int, shares: Sequence[float]) -> np.ndarray:
    """Integer counts summing to ``total`` that are closest to ``total * shares / sum(shares)`` (Hamilton method)."""
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s < 0) or s.sum() <= 0:
        raise ConfigError(f"shares must be non-negative finite numbers with a positive sum, got {list(shares)}")
    exact = total * s / s.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def iid(n: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` split into ``n_clients`` shares differing in size by at most one."""
    _check_clients(n_clients)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), n_clients)]


def proportional(n: int, shares: Sequence[float], rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Split ``range(n)`` into parts of sizes ``largest_remainder(n, shares)`` (random order when ``rng`` given)."""
    counts = largest_remainder(n, shares)
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [np.sort(idx[bounds[i]:bounds[i + 1]]) for i in range(len(counts))]


def dirichlet(labels: Sequence[int] | np.ndarray, n_clients: int, alpha: float,
              rng: np.random.Generator) -> list[np.ndarray]:
    """Label-skewed split: samples of each label are divided among clients with proportions ~ Dir(alpha)."""
    _check_clients(n_clients)
    if not alpha > 0:
        raise ConfigError(f"Dirichlet concentration must be positive, got {alpha}")
    labels = np.asarray(labels)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        counts = largest_remainder(members.size, rng.dirichlet(np.full(n_clients, alpha)))
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for c in range(n_clients):
            parts[c].append(members[bounds[c]:bounds[c + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def by_document(doc_sizes: Mapping[str, int], n_clients: int) -> list[list[str]]:
    """Whole documents per client: largest first, each to the currently lightest client (LPT greedy).

    With at least as many documents as clients every client gets one; ties go to the lowest client id.
    """
    _check_clients(n_clients)
    if len(doc_sizes) < n_clients:
        raise ConfigError(f"{len(doc_sizes)} documents cannot be split by document among {n_clients} clients")
    load = [0] * n_clients
    out: list[list[str]] = [[] for _ in range(n_clients)]
    for name in sorted(doc_sizes, key=lambda d: (-doc_sizes[d], d)):
        c = min(range(n_clients), key=lambda i: (load[i], i))
        out[c].append(name)
        load[c] += int(doc_sizes[name])
    return out


class CapacityPartitioner:
    """Capacity-aware dynamic partitioning: each platform's share is proportional to its throughput.

    ``shares()`` starts from the declared ``capacities``; after each round ``observe(samples, seconds)`` records
    each client's measured throughput (samples/second) and the shares move toward it by exponential smoothing
    (``smoothing`` = weight of the new measurement). ``assign(n)`` partitions ``range(n)`` by the current shares,
    so a platform that ran slow in one round receives less data in the next.
    """

    def __init__(self, capacities: Sequence[float], *, smoothing: float = 0.5, min_share: float = 0.02) -> None:
        caps = np.asarray(capacities, dtype=np.float64)
        if caps.size == 0 or not np.all(np.isfinite(caps)) or np.any(caps <= 0):
            raise ConfigError(f"capacities must be positive, got {list(capacities)}")
        if not 0 < smoothing <= 1:
            raise ConfigError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0 <= min_share * caps.size < 1:
            raise ConfigError(f"min_share {min_share} is impossible for {caps.size} clients")
        self._throughput = caps / caps.sum()
        self.smoothing = smoothing
        self.min_share = min_share

    def shares(self) -> np.ndarray:
        """Current fractions (sum 1), each at least ``min_share``."""
        s = self._throughput / self._throughput.sum()
        s = np.maximum(s, self.min_share)
        return s / s.sum()

    def observe(self, samples: Sequence[float], seconds: Sequence[float]) -> np.ndarray:
        """Fold one round's measured throughputs into the shares; returns the new shares."""
        n = np.asarray(samples, dtype=np.float64)
        t = np.asarray(seconds, dtype=np.float64)
        if n.shape != self._throughput.shape or t.shape != n.shape or np.any(n <= 0) or np.any(t <= 0):
            raise ConfigError("observe needs one positive sample count and duration per client")
        measured = (n / t) / (n / t).sum()
        current = self._throughput / self._throughput.sum()
        self._throughput = (1 - self.smoothing) * current + self.smoothing * measured
        return self.shares()

    def assign(self, n: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Partition ``range(n)`` by the current shares."""
        return proportional(n, self.shares(), rng)
