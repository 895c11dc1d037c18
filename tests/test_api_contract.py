"""DESIGN.md's public API contract, checked as an outside user would call it."""

from __future__ import annotations

import numpy as np
import pytest

import secagg
from secagg.errors import ConfigurationError, MalformedUpdateError, SecAggError


def _updates(n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, dim).astype(np.float32 if i % 2 else np.float64) for i in range(n)]


def _reference(updates, weights, dropped=()):
    keep = [i for i in range(len(updates)) if i not in set(dropped)]
    w = np.array([weights[i] for i in keep], dtype=np.float64)
    x = np.stack([np.asarray(updates[i], dtype=np.float64) for i in keep])
    return (w[:, None] * x).sum(0) / w.sum()


@pytest.mark.parametrize("scheme", ["ckks", "masking", "packed"])
def test_simulate_returns_weighted_mean_of_survivors(scheme: str) -> None:
    ups, ws = _updates(5, 300), [1.0, 2.5, 3.0, 0.5, 4.0]
    out = secagg.simulate(ups, ws, scheme=scheme, dropped=[3], seed=7)
    assert out.dtype == np.float64 and out.shape == (300,)
    assert np.max(np.abs(out - _reference(ups, ws, dropped=[3]))) <= 1e-4


@pytest.mark.parametrize("scheme", ["ckks", "masking", "packed"])
def test_simulate_without_dropouts(scheme: str) -> None:
    ups, ws = _updates(3, 50, seed=1), [2.0, 1.0, 1.0]
    assert np.max(np.abs(secagg.simulate(ups, ws, scheme=scheme) - _reference(ups, ws))) <= 1e-4


def test_masking_too_few_survivors_raise() -> None:
    ups = _updates(4, 20)
    with pytest.raises(SecAggError):
        secagg.simulate(ups, [1.0] * 4, scheme="masking", dropped=[0, 1, 2], threshold=3, neighbors=3)


def test_unknown_scheme_and_bad_inputs() -> None:
    ups = _updates(2, 5)
    with pytest.raises(ConfigurationError):
        secagg.simulate(ups, [1.0, 1.0], scheme="rot13")
    with pytest.raises(MalformedUpdateError):
        secagg.simulate(ups, [1.0], scheme="masking")
    with pytest.raises(MalformedUpdateError):
        secagg.simulate(ups, [1.0, -1.0], scheme="masking")
    with pytest.raises(MalformedUpdateError):
        secagg.simulate([ups[0], ups[1][:3]], [1.0, 1.0], scheme="ckks")
    with pytest.raises(ConfigurationError):
        secagg.simulate(ups, [1.0, 1.0], scheme="masking", dropped=[5])


def test_keyholder_public_context_and_aggregator_refusal() -> None:
    from secagg.ckks import CKKSAggregator, KeyHolder
    from secagg.errors import KeyMisuseError

    kh = KeyHolder()
    public = kh.public_context()
    assert isinstance(public, bytes)
    CKKSAggregator(public, participants=[0, 1], dim=4)  # the public context is accepted
    import tenseal as ts

    from secagg.he_round import bundle, unbundle

    context, seal_key = unbundle(public)
    assert not ts.context_from(context).is_private()
    secret_ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    secret_ctx.global_scale = 2**40
    with pytest.raises(KeyMisuseError):
        CKKSAggregator(bundle(secret_ctx.serialize(save_secret_key=True), seal_key), participants=[0, 1], dim=4)


def test_public_api_is_curated() -> None:
    assert "simulate" in secagg.__all__
    for name in secagg.__all__:
        assert hasattr(secagg, name)


def test_masking_options_through_simulate() -> None:
    ups, ws = _updates(6, 40, seed=2), [1.0, 2.0, 0.5, 3.0, 1.5, 2.5]
    ref = _reference(ups, ws, dropped=[2])
    step16 = 3.0 / (32767 // 6 - 1)  # 16-bit ring, 6 clients, |w x| <= max weight 3: one quantization step
    tol16 = 5 * step16 * 2 / (sum(ws) - ws[2] - 5 * step16)  # 5 contributors, <1 step each in both lanes, |x| <= 1
    for opts, tol in (({"sign": True}, 1e-4), ({"rounding": "deterministic", "neighbors": 2, "threshold": 2}, 1e-4),
                      ({"ring_bits": 16}, tol16)):
        out = secagg.simulate(ups, ws, scheme="masking", dropped=[2], seed=3, **opts)
        assert out.dtype == np.float64 and np.max(np.abs(out - ref)) <= tol, opts


def test_masking_complete_graph_tolerates_dropouts_down_to_the_signature_quorum() -> None:
    ups, ws = _updates(8, 10, seed=4), [1.0] * 8
    # n = 8, t = 5, share_dropouts 1, max_corrupt 2: a quorum of min_signers = 6 must survive to the consistency check
    out = secagg.simulate(ups, ws, scheme="masking", dropped=[0, 7], neighbors=7, threshold=5)
    assert np.max(np.abs(out - _reference(ups, ws, dropped=[0, 7]))) <= 1e-4
    with pytest.raises(SecAggError):
        secagg.simulate(ups, ws, scheme="masking", dropped=[0, 5, 7], neighbors=7, threshold=5)
    # with a trusted (honest-but-curious) server and no signatures the threshold alone bounds dropouts
    out = secagg.simulate(ups, ws, scheme="masking", dropped=[0, 5, 7], neighbors=7, threshold=5, sign=False)
    assert np.max(np.abs(out - _reference(ups, ws, dropped=[0, 5, 7]))) <= 1e-4


@pytest.mark.parametrize("scheme", ["masking", "ckks", "packed"])
@pytest.mark.parametrize("weight", [True, "1.0", None, np.array([1.0]), float("nan"), -1.0, 0.0])
def test_every_scheme_refuses_non_numeric_or_non_positive_weights(scheme: str, weight) -> None:
    from secagg.errors import MalformedUpdateError

    ups = _updates(3, 4, seed=1)
    with pytest.raises(MalformedUpdateError):
        secagg.simulate(ups, [1.0, weight, 1.0], scheme=scheme)
