"""One engine, two drivers: the in-process pump and the gRPC services on loopback compute the same model.

The same workload (seeded synthetic clients), the same scheme options and the same strategy run through
:class:`training.inprocess.federation.Federation` (FIFO pump, simulated clock) and :class:`training.services.loopback.Deployment`
(real gRPC + mTLS, threads). Masking with ``rounding = "deterministic"`` is deterministic, so the models must be equal
bit for bit; CKKS must agree within its error. The gRPC clients receive the model as float32 (what they train in),
so the in-process clients are given the same float32-rounded model. Asynchronous cohorts depend on arrival order
over the network, so the in-process run replays the gRPC run's recorded cohorts and base versions.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.engine.rules import BufferedAsync, FedAvg
from training.inprocess.federation import Federation
from training.inprocess.secure_sum import SecureSum
from training.services.loopback import Deployment
from training.services.workloads import SyntheticWorkload

DIM, N = 24, 3
OPTIONS = {"masking": {"clip": 1.0, "rounding": "deterministic", "ring_bits": 32},
           "ckks": {"params": "default", "min_contributors": 2}}


def _f32(model: np.ndarray) -> np.ndarray:
    return model.astype(np.float32).astype(np.float64)


def _over_grpc(scheme: str, work: SyntheticWorkload, rounds: int):
    sources = {i: work.source(i) for i in range(N)}
    with Deployment(scheme, sources, DIM, rounds=rounds, options=OPTIONS[scheme], step=work.step(),
                    stage_timeout=10.0, checkin_timeout=5.0) as dep:
        records = dep.run(timeout=120)
        model = dep.coordinator.state.model.copy()
    assert [r.status for r in records] == ["done"] * rounds, [r.reason for r in records]
    return model, records


def _in_process(scheme: str, strategy, schedule, dim: int = DIM) -> np.ndarray:
    """``schedule``: per round, {client: base version} of the cohort (every client from the current version for a
    synchronous rule)."""
    work = SyntheticWorkload(dim, N, seed=7, clip=1.0)
    sources = {i: work.source(i) for i in range(N)}
    opts = dict(OPTIONS[scheme])
    secure = SecureSum(scheme, **({"clip": opts["clip"], "rounding": opts["rounding"], "ring_bits": opts["ring_bits"]}
                                  if scheme == "masking" else {"params": opts["params"]}))
    fed = Federation(np.zeros(dim), strategy, secure, list(range(N)), update_clip=1e9)  # L2 clip: no-op
    versions = [fed.global_vec.copy()]
    for cohort in schedule:
        fed.aggregate({c: sources[c].update(_f32(versions[b]), b) for c, b in cohort.items()})
        versions.append(fed.global_vec.copy())
    return fed.global_vec


@pytest.mark.parametrize("scheme", ["masking", "ckks"])
def test_sync_fedavg_gives_the_same_model_in_process_and_over_grpc(scheme):
    work = SyntheticWorkload(DIM, N, seed=7, clip=1.0, strategy=FedAvg)
    grpc_model, records = _over_grpc(scheme, work, rounds=2)
    assert all(r.cohort == (0, 1, 2) for r in records)
    local = _in_process(scheme, FedAvg(), [{c: r for c in range(N)} for r in range(2)])
    assert np.any(local != 0)
    if scheme == "masking":
        assert np.array_equal(local, grpc_model)  # bit for bit
    else:
        np.testing.assert_allclose(local, grpc_model, atol=1e-5, rtol=0)


def test_buffered_async_gives_the_same_model_in_process_and_over_grpc():
    make = lambda: BufferedAsync(buffer_size=2, alpha=0.8)  # noqa: E731
    work = SyntheticWorkload(DIM, N, seed=7, clip=1.0, strategy=make)
    grpc_model, records = _over_grpc("masking", work, rounds=3)
    schedule = [{int(c): int(b) for c, b in r.terms["base_versions"].items()} for r in records]
    assert all(len(s) == 2 for s in schedule)
    local = _in_process("masking", make(), schedule)
    assert np.array_equal(local, grpc_model)


def test_the_synthetic_evaluation_in_blocks_equals_the_whole_formula() -> None:
    """The aggregator's evaluation never holds a target: block by block, drawn in step from each client's seeded
    Generator; it equals the loss computed from the clients' whole targets (so the metrics did not change)."""
    from training.services.workloads import synthetic

    for dim, clients in ((5, 2), (1000, 3), (2 * synthetic._BLOCK + 17, 4)):
        work = SyntheticWorkload(dim, clients, seed=3, clip=0.7)
        model = np.random.default_rng(dim).normal(size=dim)
        srcs = [work.source(i) for i in range(clients)]
        mean = sum(s.weight * s.target for s in srcs) / sum(s.weight for s in srcs)
        want = float(np.mean((mean - model) ** 2))
        assert work.evaluate(model)["loss"] == pytest.approx(want, rel=1e-12)
