"""clip_update: norm bound, shape and direction kept, identity inside the ball, named errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privacy.clipping import clip_update
from privacy.errors import ConfigurationError, InvalidUpdateError

vectors = arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e6, 1e6, allow_nan=False, width=64))
norms = st.floats(1e-3, 1e3)


@settings(max_examples=150, deadline=None)
@given(x=vectors, c=norms)
def test_clip_properties(x, c):
    original = x.copy()
    out, norm = clip_update(x, c)
    assert out.shape == x.shape and out.dtype == np.float64
    assert np.array_equal(x, original)  # input untouched
    assert norm == pytest.approx(float(np.linalg.norm(x)), rel=1e-12, abs=0)
    assert np.linalg.norm(out) <= c
    if norm <= c:
        assert np.array_equal(out, x)
    else:  # same direction, scaled by C/‖x‖ (up to rounding)
        np.testing.assert_allclose(out, x * (c / norm), rtol=1e-12, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e3, 1e3, width=32)), c=norms)
def test_float32_input_is_clipped_in_float64(x, c):
    out, _ = clip_update(x, c)
    assert out.dtype == np.float64 and out.shape == x.shape and np.linalg.norm(out) <= c


def test_huge_finite_values_do_not_overflow():
    x = np.array([1e300, -1e300, 3e299])
    out, norm = clip_update(x, 1.0)
    assert np.isfinite(norm) and norm == pytest.approx(1e300 * np.sqrt(2.09))
    assert np.linalg.norm(out) <= 1.0


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([np.inf, 0.0]), np.zeros((2, 3)),
                                 np.zeros(0), np.array(["a"]), [1.0, 2.0], np.array([1 + 2j])])
def test_bad_updates_raise_named_error(bad):
    with pytest.raises(InvalidUpdateError):
        clip_update(bad, 1.0)


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan"), float("inf"), True])
def test_bad_clip_norm_raises(c):
    with pytest.raises(ConfigurationError):
        clip_update(np.ones(3), c)
