"""The federated-round context manager around a plain PyTorch loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from training.errors import SessionError
from training.workload.trainer import get_flat, set_flat
from training.inprocess.session import FederatedSession


def _data(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1


def _plain_loop(model, x, y, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("scheme", ["ckks", "masking", "packed"])
def test_context_manager_round_equals_plaintext_fedavg(scheme):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    fed = FederatedSession(model, clients=2, scheme=scheme, aggregator="fedavg", update_clip=10.0)
    start = get_flat(model).copy()
    set_flat(model, np.zeros_like(start))  # the context manager must load the global weights on enter
    sizes, local = [30, 90], []
    for i in range(2):
        x, y = _data(i, sizes[i])
        with fed.client(i).round(model) as r:
            if i == 0:
                assert np.allclose(get_flat(model), start)
            loss = _plain_loop(model, x, y)
            local.append(get_flat(model).copy())
            r.report(num_samples=sizes[i], loss=loss)
        if i == 0:
            assert r.report_result is None  # the round is still open
    assert r.report_result is not None and r.report_result.contributors == (0, 1)
    ref = (sizes[0] * local[0] + sizes[1] * local[1]) / sum(sizes)
    atol = 2e-5
    if scheme == "packed":  # quantized lanes: the codec's own bound on (Σ w x, Σ w), carried into the mean
        d_sum, d_weight = fed.federation.secure.last_roles[1].codec.error_bound(2)
        atol = (d_sum + float(np.max(np.abs(ref - start))) * d_weight) / (sum(sizes) - d_weight)
    assert np.allclose(fed.federation.global_vec, ref, atol=atol, rtol=0)
    assert np.allclose(get_flat(model), ref, atol=atol, rtol=0)  # the client closing the round got the new model
    assert r.report_result.bytes_up[0] > 0 and r.report_result.bytes_down[1] >= 4 * start.size


def test_round_without_report_or_with_an_error_submits_nothing():
    model = torch.nn.Linear(4, 1)
    fed = FederatedSession(model, clients=2, scheme="masking", update_clip=1.0)
    with pytest.raises(SessionError):
        with fed.client(0).round(model):
            pass
    with pytest.raises(RuntimeError):
        with fed.client(0).round(model) as r:
            r.report(num_samples=1, loss=0.0)
            raise RuntimeError("the user's loop failed")
    assert fed.federation.round == 0 and fed._pending == {}
    with pytest.raises(SessionError):
        fed.client(7)
    with fed.client(1).round(model) as r:
        r.report(num_samples=1, loss=0.0)
        with pytest.raises(SessionError):
            r.report(num_samples=1, loss=0.0)


def test_threads_block_until_the_round_completes():
    torch.manual_seed(1)
    base = torch.nn.Linear(4, 1)
    fed = FederatedSession(base, clients=2, scheme="masking", update_clip=1.0)
    models = [torch.nn.Linear(4, 1) for _ in range(2)]
    errors = []

    def worker(i):
        try:
            x, y = _data(10 + i, 40)
            with fed.client(i).round(models[i], block=True) as r:
                r.report(num_samples=40, loss=_plain_loop(models[i], x, y))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert np.allclose(get_flat(models[0]), get_flat(models[1]))
    assert np.allclose(get_flat(models[0]), fed.federation.global_vec)
    assert fed.federation.round == 1


def test_async_session_closes_a_round_per_buffer_and_discounts_stale_clients():
    from training.engine.rules import staleness_weight

    torch.manual_seed(2)
    models = [torch.nn.Linear(4, 1) for _ in range(3)]
    fed = FederatedSession(models[0], clients=3, scheme="masking", aggregator="async", update_clip=1.0,
                           aggregator_options={"buffer_size": 2, "alpha": 1.0, "staleness": "polynomial", "a": 1.0})
    w0 = fed.federation.global_vec.copy()
    local = {}
    # all three start from version 0; nested blocks exit in reverse order: 2, 1 (closing round 1), then 0
    with fed.client(0).round(models[0]) as r0, fed.client(1).round(models[1]) as r1, \
            fed.client(2).round(models[2]) as r2:
        for i, r in enumerate((r0, r1, r2)):
            x, y = _data(20 + i, 30)
            r.report(num_samples=30, loss=_plain_loop(models[i], x, y, steps=3))
            local[i] = get_flat(models[i]).copy()
    assert fed.federation.round == 1 and fed.reports[0].contributors == (1, 2)
    w1 = w0 + ((local[1] - w0) + (local[2] - w0)) / 2
    assert np.allclose(fed.federation.global_vec, w1, atol=2e-5)
    assert list(fed._pending) == [0]  # client 0's update (from version 0) waits for the next buffer
    with fed.client(1).round(models[1]) as r:  # client 1 trains from version 1
        x, y = _data(30, 30)
        r.report(num_samples=30, loss=_plain_loop(models[1], x, y, steps=3))
        fresh = get_flat(models[1]).copy()
    assert fed.federation.round == 2 and fed.reports[1].contributors == (0, 1)
    s = staleness_weight(1, "polynomial", a=1.0)  # client 0 is one version behind
    w2 = w1 + (s * (local[0] - w1) + (fresh - w1)) / 2
    assert np.allclose(fed.federation.global_vec, w2, atol=2e-5)


@pytest.mark.parametrize("scheme", ["ckks", "masking"])
def test_loss_weighted_session_matches_formula_2_and_shifts_by_the_cohort_aggregate(scheme):
    torch.manual_seed(3)
    model = torch.nn.Linear(4, 1)
    fed = FederatedSession(model, clients=3, scheme=scheme, aggregator="loss-weighted", update_clip=1.0)
    strategy = fed.federation.strategy
    for rnd in range(2):
        local, losses = [], []
        for i in range(3):
            x, y = _data(40 + 3 * rnd + i, 30)
            with fed.client(i).round(model) as r:
                loss = _plain_loop(model, x, y, steps=2 + i)
                local.append(get_flat(model).copy())
                losses.append(loss + 2.0 * i)  # distinct reported losses: distinct weights
                r.report(num_samples=30, loss=losses[-1])
        alpha = np.exp(-np.array(losses)) / np.exp(-np.array(losses)).sum()
        assert np.allclose(fed.federation.global_vec, sum(a * w for a, w in zip(alpha, local)), atol=2e-5)
        assert not np.allclose(fed.federation.global_vec, np.mean(local, axis=0), atol=1e-3)
        # the next shift is the cohort's soft-min loss, computed by the server from the aggregate alone
        assert strategy.cohort_loss == pytest.approx(-np.log(np.mean(np.exp(-np.array(losses)))), abs=1e-4)


def test_close_round_runs_with_the_clients_that_submitted():
    from secagg.errors import SecAggError

    torch.manual_seed(4)
    model = torch.nn.Linear(4, 1)
    fed = FederatedSession(model, clients=3, scheme="masking", aggregator="fedavg", update_clip=10.0)
    with pytest.raises(SessionError):
        fed.close_round()  # nothing submitted
    local, sizes = [], [20, 60]
    for i in range(2):
        x, y = _data(50 + i, sizes[i])
        with fed.client(i).round(model) as r:
            r.report(num_samples=sizes[i], loss=_plain_loop(model, x, y))
            local.append(get_flat(model).copy())
        if i == 0:
            with pytest.raises(SecAggError):  # one update alone cannot be hidden
                fed.close_round()
            assert list(fed._pending) == [0]
    with pytest.raises(RuntimeError):
        with fed.client(2).round(model) as r:
            raise RuntimeError("client 2's loop failed")
    assert fed.federation.round == 0
    report = fed.close_round()
    assert report.contributors == (0, 1) and fed.federation.round == 1 and fed._pending == {}
    ref = (sizes[0] * local[0] + sizes[1] * local[1]) / sum(sizes)
    assert np.allclose(fed.federation.global_vec, ref, atol=2e-5)
