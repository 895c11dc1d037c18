"""The SecAgg+ communication graph (Bell et al. 2020): a k-regular Harary graph on a public random permutation.

The permutation comes from the public ``graph_seed`` through AES-CTR (each participant gets a 64-bit key read from
the keystream in sorted-id order; participants are ordered by key, ties by id), so every party derives the same
graph and the server cannot choose who neighbours whom. Harary graph H(k, n) on positions 0..n-1: position i is
adjacent to i ± 1, ..., i ± k/2 (mod n), and, for odd k (n even), also to i + n/2.

Invariants: symmetric, no self-loops, every node has degree exactly k; complete when k >= n - 1. Odd k with odd n
admits no k-regular graph (n*k would be odd): :func:`effective_degree` raises k to k + 1 in that case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from secagg.errors import ConfigurationError
from secagg.hazmat.prg import keystream

__all__ = ["effective_degree", "permutation", "harary_graph"]


def effective_degree(n: int, k: int) -> int:
    """The degree actually used for ``n`` nodes when ``k`` is asked: ``min(k, n-1)``, plus one if odd with odd n."""
    if n < 2 or k < 1:
        raise ConfigurationError(f"a graph needs n >= 2 nodes and degree >= 1, got n={n}, k={k}")
    k = min(k, n - 1)
    if k % 2 and n % 2:
        k += 1
    return min(k, n - 1)


def permutation(participants: Sequence[int], graph_seed: bytes) -> list[int]:
    """The public random order of ``participants`` derived from ``graph_seed`` (16 bytes) via AES-CTR."""
    if len(graph_seed) != 16:
        raise ConfigurationError(f"graph_seed must be 16 bytes, got {len(graph_seed)}")
    ids = sorted(participants)
    keys = np.frombuffer(keystream(graph_seed, 8 * len(ids)), dtype="<u8")
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: (int(keys[i]), ids[i]))]


def harary_graph(participants: Sequence[int], k: int, graph_seed: bytes) -> dict[int, frozenset[int]]:
    """Neighbour sets of the k-regular Harary graph on the seeded permutation (``k`` must be effective)."""
    n = len(participants)
    if len(set(participants)) != n:
        raise ConfigurationError("participants must be distinct")
    if k != effective_degree(n, k):
        raise ConfigurationError(f"no {k}-regular graph on {n} nodes; use effective_degree({n}, {k})")
    order = permutation(participants, graph_seed)
    if k == n - 1:
        everyone = frozenset(order)
        return {u: everyone - {u} for u in order}
    offsets = list(range(1, k // 2 + 1))
    out: dict[int, frozenset[int]] = {}
    for i, u in enumerate(order):
        pos = {(i + d) % n for d in offsets} | {(i - d) % n for d in offsets}
        if k % 2:
            pos.add((i + n // 2) % n)
        out[u] = frozenset(order[j] for j in pos)
    return out
