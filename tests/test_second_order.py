"""The depth-0 heads: RLS with forgetting and an online Newton step, stable on long streams."""

from __future__ import annotations

import numpy as np
import pytest

from stream_mtl.backends.heads import HeadColumns, evaluate
from stream_mtl.backends.second_order import SecondOrderHeads


def _heads(kind: str, n_inputs: int, forgetting: float) -> tuple[SecondOrderHeads, HeadColumns]:
    heads = SecondOrderHeads(forgetting=forgetting)
    heads.resize(n_inputs, old=[], new=[(0, 1)])
    return heads, HeadColumns([(kind, 0, 1)])


def _step(heads, columns, X, targets):
    labelled = np.ones((len(X), 1), bool)
    values = evaluate(columns, heads.outputs(X), targets[:, None], labelled)
    heads.step(X, values.gradient, values.curvature, labelled)


def test_rls_with_strong_forgetting_stays_stable_over_30k_steps_with_idle_inputs():
    """Forgetting 0.99 with an input that goes constant and one that is rarely on: the
    conditions under which plain RLS winds up and loses positive definiteness."""
    rng = np.random.default_rng(0)
    heads, columns = _heads("regression", 4, forgetting=0.99)
    truth = np.array([0.5, -1.0, 2.0, 0.3])
    for step in range(30_000):  # unguarded, it diverged after 4,400 steps
        x = rng.normal(size=4)
        if step > 5_000:
            x[2] = 0.0  # goes idle for good
        x[3] = float(rng.random() < 0.001)  # rarely on
        _step(heads, columns, x[None, :], np.array([x @ truth + 0.1 * rng.normal()]))
    cov = heads.cov[0]
    assert np.isfinite(heads.weight).all()
    np.testing.assert_array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0.0
    assert np.diagonal(cov).max() <= heads.prior * (1.0 + 1e-12)
    np.testing.assert_allclose(heads.weight[0, [1, 2]], truth[:2], atol=0.05)


def test_a_batch_step_equals_row_by_row_rls_without_forgetting():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    one, columns = _heads("regression", 3, forgetting=1.0)
    many, _ = _heads("regression", 3, forgetting=1.0)
    for row in range(40):
        _step(one, columns, X[row : row + 1], y[row : row + 1])
    _step(many, columns, X, y)
    np.testing.assert_allclose(many.weight, one.weight, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.cov, one.cov, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("labels", ["every row", "some rows"])
def test_a_batch_step_of_several_outputs_equals_their_rls_row_by_row(labels):
    """Outputs labelled on the same rows share one product (the shortcut), on different
    rows each has its own: either way, RLS row by row."""
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    labelled = np.ones((40, 3), bool) if labels == "every row" else rng.random((40, 3)) < 0.6
    columns = HeadColumns([("regression", k, k + 1) for k in range(3)])
    one, many = (SecondOrderHeads(forgetting=1.0) for _ in range(2))
    for heads in (one, many):
        heads.resize(3, old=[], new=[(0, 3)])

    def step(heads, rows) -> None:
        values = evaluate(columns, heads.outputs(X[rows]), Y[rows], labelled[rows])
        heads.step(X[rows], values.gradient, values.curvature, labelled[rows])

    for row in range(40):
        step(one, slice(row, row + 1))
    step(many, slice(0, 40))
    np.testing.assert_allclose(many.weight, one.weight, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.cov, one.cov, rtol=1e-9, atol=1e-12)


def test_the_logistic_head_learns_calibrated_probabilities():
    rng = np.random.default_rng(2)
    heads, columns = _heads("binary", 2, forgetting=1.0)
    truth = np.array([1.5, -2.0])
    X = rng.normal(size=(20_000, 2))
    p_true = 1.0 / (1.0 + np.exp(-(X @ truth - 2.0)))  # about 20% positives
    for row in range(len(X)):
        label = float(rng.random() < p_true[row])
        _step(heads, columns, X[row : row + 1], np.array([label]))
    np.testing.assert_allclose(heads.weight[0], [-2.0, 1.5, -2.0], atol=0.1)


def test_new_inputs_start_with_weight_zero_and_the_prior_variance():
    heads, columns = _heads("regression", 2, forgetting=0.99)
    _step(heads, columns, np.array([[1.0, 2.0]]), np.array([3.0]))
    before = heads.weight.copy()
    heads.resize(3, old=[(0, 1)], new=[(0, 1)])
    np.testing.assert_array_equal(heads.weight[:, :3], before)
    assert heads.weight[0, 3] == 0.0 and heads.cov[0, 3, 3] == heads.prior
    assert not heads.cov[0, 3, :3].any()


def test_the_compiled_row_step_agrees_with_numpy_over_2000_steps():
    """Mixed kinds, rows that label only some outputs, forgetting 0.99 and an input that
    goes idle (so that variances are clipped): the kernel against the NumPy reference."""
    rng = np.random.default_rng(3)
    columns = HeadColumns([("regression", 0, 1), ("binary", 1, 2), ("multiclass", 2, 5)])
    layout = [(0, 1), (1, 2), (2, 5)]
    pair = [SecondOrderHeads(forgetting=0.99, compiled=flag) for flag in (True, False)]
    for heads in pair:
        heads.resize(6, old=[], new=layout)
    clipped = 0
    for step in range(2_000):
        x = rng.normal(size=(1, 6))
        x[0, 4] = 0.0 if step > 300 else x[0, 4]
        targets = np.array([[x[0, 0] - x[0, 1], float(x[0, 2] > 0), 0.0, 0.0, 0.0]])
        targets[0, 2 + rng.integers(3)] = 1.0
        labelled = rng.random((1, 5)) < 0.7
        labelled[0, 2:] = labelled[0, 2]  # a class block is labelled together
        for heads in pair:
            values = evaluate(columns, heads.outputs(x), targets, labelled)
            heads.step(x, values.gradient, values.curvature, labelled)
        clipped += np.diagonal(pair[0].cov, axis1=1, axis2=2).max() >= pair[0].prior * (1 - 1e-9)
    assert clipped > 1_000, "the variances were never clipped: the test misses a branch"
    np.testing.assert_allclose(pair[0].weight, pair[1].weight, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pair[0].cov, pair[1].cov, rtol=1e-12, atol=1e-12)


def test_outputs_with_equal_covariances_share_its_update_and_learn_the_same_numbers(
    monkeypatch,
):
    """Regression outputs labelled on the same rows keep equal covariances, which the
    compiled step updates once. Against the same step with every output on its own:
    the same numbers, bit for bit, while outputs part (rows that label some of them),
    the covariances are read (and written out) and a new output arrives."""
    from stream_mtl.backends import second_order

    rng = np.random.default_rng(5)
    kinds = [("regression", 0, 1), ("regression", 1, 2), ("regression", 2, 3), ("binary", 3, 4)]
    layout = [(start, stop) for _, start, stop in kinds]
    shared, alone = (SecondOrderHeads(forgetting=0.99) for _ in range(2))
    for heads in (shared, alone):
        heads.resize(5, old=[], new=layout)
    lone_twins = np.full(len(kinds), -1)
    most_followers = 0
    for step in range(1_500):
        if step == 700:  # a new regression output, fresh as the others were
            kinds.append(("regression", 4, 5))
            for heads in (shared, alone):
                heads.resize(5, old=layout, new=[*layout, (4, 5)])
            layout.append((4, 5))
            lone_twins = np.full(len(kinds), -1)
        columns = HeadColumns(kinds)
        x = rng.normal(size=(1, 5))
        targets = rng.normal(size=(1, len(kinds)))
        targets[0, 3] = float(targets[0, 3] > 0)
        labelled = np.ones((1, len(kinds)), bool)
        if step >= 400:
            labelled[0, 2] = step % 3 != 0  # output 2 parts from 0 and 1
        for heads in (shared, alone):
            values = evaluate(columns, heads.outputs(x), targets, labelled)
            if heads is alone:
                monkeypatch.setattr(second_order, "_twins", lambda cov: np.full(len(cov), -1))
            heads.step(x, values.gradient, values.curvature, labelled)
            monkeypatch.undo()
        most_followers = max(most_followers, int((shared.compiled_state()[1] >= 0).sum()))
        np.testing.assert_array_equal(alone.compiled_state()[1], lone_twins)
        if step % 250 == 0:  # a read writes every covariance out
            np.testing.assert_array_equal(shared.cov, alone.cov)
        np.testing.assert_array_equal(shared.weight, alone.weight)
    np.testing.assert_array_equal(shared.cov, alone.cov)
    assert most_followers >= 2, "no output ever shared a covariance: the test misses the path"
    twins = shared.compiled_state()[1]
    assert twins[1] == 0 and twins[2] == -1 and twins[3] == -1  # 2 and the binary one parted
