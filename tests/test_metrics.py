"""MACE and its summary on cases computed by hand."""

import math

import numpy as np
import pytest

from homogen.model.metrics import corner_errors, mace, pair_errors, summarize


def test_corner_errors_by_hand():
    true = np.array(
        [
            [3, 4, 0, 0, 0, 0, 0, 0],  # TL off by (3,4) -> 5, others exact
            [6, 8, 6, 8, -6, -8, 0, 10],  # every corner 10 px away from a zero prediction
        ],
        dtype=np.float32,
    )
    pred = np.zeros_like(true)
    e = corner_errors(pred, true)
    assert e.shape == (2, 4)
    np.testing.assert_allclose(e, [[5, 0, 0, 0], [10, 10, 10, 10]])
    np.testing.assert_allclose(pair_errors(pred, true), [1.25, 10.0])
    assert mace(pred, true) == pytest.approx((1.25 + 10.0) / 2)


def test_mace_is_symmetric_translation_invariant_and_accepts_corner_layout():
    rng = np.random.default_rng(0)
    a = rng.uniform(-32, 32, (5, 8))
    b = rng.uniform(-32, 32, (5, 8))
    assert mace(a, b) == pytest.approx(mace(b, a))
    assert mace(a + 7, b + 7) == pytest.approx(mace(a, b))
    assert mace(a.reshape(5, 4, 2), b.reshape(5, 4, 2)) == pytest.approx(mace(a, b))
    assert mace(a, a) == 0.0
    # One pair, one corner off by (1, 1): sqrt(2) / 4.
    c = a.copy()
    c[2, 4:6] += 1
    assert mace(c[2], a[2]) == pytest.approx(math.sqrt(2) / 4)


def test_shape_errors():
    with pytest.raises(ValueError):
        corner_errors(np.zeros((2, 8)), np.zeros((3, 8)))
    with pytest.raises(ValueError):
        corner_errors(np.zeros((2, 6)), np.zeros((2, 6)))
    with pytest.raises(ValueError):
        mace(np.zeros((0, 8)), np.zeros((0, 8)))


def test_summarize_by_hand():
    s = summarize(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), failures=np.array([0, 1, 0, 1, 1], bool))
    assert s["mean"] == pytest.approx(22.0)
    assert s["median"] == pytest.approx(3.0)
    # Linear interpolation between the 4th (4.0) and 5th (100.0) values at rank 0.95 * 4 = 3.8.
    assert s["p95"] == pytest.approx(4.0 + 0.8 * 96.0)
    assert s["failures"] == 3 and s["n"] == 5
    # Per-corner errors are averaged per pair first; a count works as failures.
    s2 = summarize(np.array([[5, 0, 0, 0], [10, 10, 10, 10]]), failures=1)
    assert s2["mean"] == pytest.approx(5.625) and s2["failures"] == 1 and s2["n"] == 2
    empty = summarize(np.empty(0))
    assert empty["n"] == 0 and math.isnan(empty["mean"])
