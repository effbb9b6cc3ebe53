"""The compiled kernels against their NumPy references (`compiled=False`), to 1e-12.

The second-order heads' kernel is tested with them, in `test_second_order.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_mtl.backends.hedge import Hedge


def test_the_compiled_hedge_step_agrees_with_numpy_over_5000_steps():
    """Five heads, four tasks labelled at random, gradients on several scales and a
    floor that binds (the weights of poor heads sit on it)."""
    rng = np.random.default_rng(4)
    pair = [Hedge(n_heads=5, floor=0.05, n_first=2, compiled=flag) for flag in (True, False)]
    for hedge in pair:
        for _ in range(4):
            hedge.add_task()
    scales = np.array([1e-3, 1.0, 30.0, 1.0])[:, None]
    floored = 0
    for _ in range(5_000):
        gradient = scales * (rng.normal(size=(4, 5)) + np.array([0.5, 0.2, 0.0, -0.3, 0.4]))
        labelled = rng.random(4) < 0.6
        for hedge in pair:
            hedge.update(gradient, labelled)
        floored += int(np.isclose(pair[0].alpha, 0.05 / 5, rtol=0, atol=1e-15).any())
    assert floored > 1_000, "the floor never bound: the test misses a branch"
    np.testing.assert_allclose(pair[0].alpha, pair[1].alpha, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pair[0].scale, pair[1].scale, rtol=1e-12, atol=0)
    assert not np.array_equal(pair[0].alpha, np.full((4, 5), 0.2)), "nothing moved"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_finds_one_nan_or_infinity_anywhere(dtype):
    from stream_mtl.backends.kernels import all_finite

    values = np.random.default_rng(5).normal(size=1_001).astype(dtype) * 1e30
    assert all_finite(values) and all_finite(values[:0])
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 500, 1_000):
            broken = values.copy()
            broken[where] = bad
            assert not all_finite(broken), (bad, where)


def test_all_finite_matrices_finds_one_nan_or_infinity_in_any_matrix():
    from stream_mtl.backends.kernels import all_finite_matrices

    matrices = tuple(np.random.default_rng(6).normal(size=(3, 4, 5)) * 1e30)
    assert all_finite_matrices(matrices) and all_finite_matrices((np.zeros((0, 5)),))
    for bad in (np.nan, np.inf, -np.inf):
        for which, where in ((0, (0, 0)), (1, (2, 1)), (2, (3, 4))):
            broken = [m.copy() for m in matrices]
            broken[which][where] = bad
            assert not all_finite_matrices(tuple(broken)), (bad, which, where)


def test_the_compiled_welford_step_is_numpys_bit_for_bit():
    """A stream's steady schema takes `welford_step`; it must scale exactly as the NumPy
    reference does (and so as `learn_many`'s batch update, held to the same)."""
    from stream_mtl.moments import RunningMoments

    rng = np.random.default_rng(8)
    compiled, reference = RunningMoments(), RunningMoments()
    for moments in (compiled, reference):
        moments.grow(6)
    for i in range(3_000):
        row = rng.normal(size=6) * np.array([1e-3, 1.0, 1e3, 1.0, 1.0, 0.0])
        row[:5] += 50.0 * (i > 1500)  # a shift; the last column stays constant
        ours = compiled.update_and_scale(slice(None), row)
        theirs = reference._update_and_scale(slice(None), row)
        assert np.array_equal(ours, theirs), i
    for name in ("count", "mean", "m2", "stdev"):
        assert np.array_equal(getattr(compiled, name), getattr(reference, name)), name
    assert compiled.stdev[5] == 1.0  # a constant column: its deviation is undefined, 1


def test_a_batch_update_of_the_moments_is_the_row_by_row_reference_bit_for_bit():
    """`learn_many` scales features and targets with `welford_rows`: row i of a batch
    must get exactly what the i-th of a loop of single updates gets, absent entries
    skipped, whatever columns the batch names."""
    from stream_mtl.moments import RunningMoments

    rng = np.random.default_rng(9)
    batched, reference = RunningMoments(), RunningMoments()
    for moments in (batched, reference):
        moments.grow(7)
    columns = np.array([5, 0, 2, 3, 6])  # not in order, and not all of them
    for start in range(0, 2_000, 250):
        values = rng.normal(size=(250, 5)) * np.array([1e-3, 1.0, 1e3, 1.0, 0.0]) + 50.0
        present = rng.random((250, 5)) < 0.8
        ours = batched.update_and_scale_batch(columns, values, present)
        for i in range(250):
            kept = columns[present[i]]
            theirs = reference._update_and_scale(kept, values[i, present[i]])
            assert np.array_equal(ours[i, present[i]], theirs), (start, i)
            assert not ours[i, ~present[i]].any()
    for name in ("count", "mean", "m2", "stdev"):
        assert np.array_equal(getattr(batched, name), getattr(reference, name)), name
    assert batched.count[[1, 4]].tolist() == [0.0, 0.0]  # columns the batches never named
