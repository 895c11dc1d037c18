"""The federated-round context manager around a plain PyTorch loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from training.errors import SessionError
from training.local import get_flat, set_flat
from training.session import FederatedSession


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


@pytest.mark.parametrize("scheme", ["ckks", "masking"])
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
    assert np.allclose(fed.federation.global_vec, ref, atol=2e-5)
    assert np.allclose(get_flat(model), ref, atol=2e-5)  # the client closing the round got the new model
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
