"""One streamed round with every role in this process and inputs that never exist whole (for full_model.py).

Each client's update is a :class:`SeededUpdate`: values made block by block from the client's seed when a role
reads a slice, so the process holds no client's whole update; the error of the released mean is checked against
the same blocks, regenerated one at a time. What the process peaks at is then the protocol's own memory.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np

from benchmarks.crypto_costs import _Timed
from secagg.roles import AGGREGATOR, KEYHOLDER
from secagg.simulation import run_round

__all__ = ["SeededUpdate", "measure_streamed", "BLOCK"]

BLOCK = 1 << 16


class SeededUpdate:
    """U(-1, 1) values of one client, block ``k`` from ``(seed, k)``; slices are made on demand (a few blocks kept)."""

    def __init__(self, dim: int, seed: int) -> None:
        self.shape, self._seed = (dim,), seed
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def block(self, k: int) -> np.ndarray:
        got = self._cache.get(k)
        if got is None:
            n = min(BLOCK, self.shape[0] - k * BLOCK)
            got = np.random.default_rng([self._seed, k]).uniform(-1, 1, n)  # benchmark data, not a secret
            self._cache[k] = got
            if len(self._cache) > 8:
                self._cache.popitem(last=False)
        return got

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi, _ = s.indices(self.shape[0])
        out = np.empty(max(0, hi - lo))
        for k in range(lo // BLOCK, -(-hi // BLOCK)):
            a, b = max(lo, k * BLOCK), min(hi, (k + 1) * BLOCK)
            out[a - lo:b - lo] = self.block(k)[a - k * BLOCK:b - k * BLOCK]
        return out


def _build(scheme: str, n: int, dim: int, weights: dict[int, float]):
    seed = os.urandom(16)
    if scheme.startswith("masking"):
        from secagg.masking.setup import build_round
        return build_round(range(n), dim=dim, weights=weights, graph_seed=seed, ring_bits=int(scheme[7:]))
    if scheme.startswith("ckks"):
        from secagg.ckks.setup import build_round
        return build_round(range(n), dim=dim, weights=weights, graph_seed=seed, params=scheme[5:])
    from secagg.packed.setup import build_round
    return build_round(range(n), dim=dim, weights=weights, graph_seed=seed)


def measure_streamed(scheme: str, n: int, dim: int, part_chunks: int = 16) -> dict:
    """One streamed round: per-client seconds and bytes up, aggregator and key-holder seconds, max error."""
    rng = np.random.default_rng(n)
    weights = dict(enumerate(rng.uniform(0.5, 2.0, n).tolist()))
    updates = {i: SeededUpdate(dim, 1000 + i) for i in range(n)}
    rnd = _build(scheme, n, dim, weights)
    clients = {i: _Timed(c) for i, c in rnd.clients.items()}
    agg = _Timed(rnd.aggregator)
    kh = _Timed(rnd.finalizer) if rnd.finalizer is not None else None
    t0 = time.perf_counter()
    res = run_round(clients, agg, updates, weights, finalizer=kh, part_chunks=part_chunks)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    total, err = sum(weights.values()), 0.0
    for k in range(-(-dim // BLOCK)):  # the exact mean, one block at a time
        want = sum(weights[i] * updates[i].block(k) for i in range(n)) / total
        got = res.weighted_sum[k * BLOCK:(k + 1) * BLOCK] / res.total_weight
        err = max(err, float(np.max(np.abs(got - want))))
    assert set(agg.bytes_to) <= set(range(n)) | {KEYHOLDER, AGGREGATOR}
    return {"client_s": sum(c.seconds for c in clients.values()) / n,
            "up_bytes": sum(c.bytes_out for c in clients.values()) / n,
            "down_bytes": sum(v for k, v in agg.bytes_to.items() if k >= 0) / n,
            "server_s": agg.seconds, "keyholder_s": kh.seconds if kh else 0.0,
            "server_to_keyholder_bytes": agg.bytes_to.get(KEYHOLDER, 0), "max_abs_error": err, "wall_s": wall,
            "part_chunks": part_chunks}
