"""learn_many: one mini-batch step whose bookkeeping equals a loop of learn_one.

River's convention for gradient-descent models is one step on the mean gradient per
batch (its own check of learn_many against a learn_one loop is skipped for them). What
a loop and a batch must share is checked here: feature and target statistics, counts,
classes and feature registration order exactly; a batch of one row equals learn_one;
and the batch gradient is the mean of the rows' gradients.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_observation, mixed_tasks, model_state

from stream_mtl import MultiTaskLearner
from stream_mtl.backends.numpy import NumpyBackend


def _rows(n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed)
    rows = [mixed_observation(rng) for _ in range(n)]
    for i, (x, y) in enumerate(rows):  # features that emerge and vanish, labels that are absent
        if i % 3 == 0:
            del y["churn"]
        if i % 4 == 1:
            x["late"] = float(i)
        if i % 5 == 2:
            del x["b"]
    return rows


def test_a_batch_leaves_the_statistics_a_loop_of_learn_one_leaves():
    rows = [(x, y) for x, y in _rows(40) if "b" in x and "late" not in x]  # a fixed schema
    loop = MultiTaskLearner(tasks=mixed_tasks(), hidden=(8,), seed=0, dtype="float64")
    batch = copy.deepcopy(loop)
    for x, y in rows:
        loop.learn_one(x, y)
    batch.learn_many(pd.DataFrame([x for x, _ in rows]), pd.DataFrame([y for _, y in rows]))
    assert batch._encoder.names == loop._encoder.names
    assert batch.n_learned == loop.n_learned
    assert batch.classes == loop.classes
    for attr in ("count", "mean", "m2", "stdev"):
        np.testing.assert_allclose(
            getattr(batch._encoder.moments, attr), getattr(loop._encoder.moments, attr), rtol=1e-12
        )
        np.testing.assert_allclose(
            getattr(batch._outputs.scale, attr), getattr(loop._outputs.scale, attr), rtol=1e-12
        )


def test_a_batch_of_one_row_equals_learn_one():
    one = MultiTaskLearner(tasks=mixed_tasks(), hidden=(8,), seed=0, dtype="float64")
    many = copy.deepcopy(one)
    for x, y in _rows(30):
        one.learn_one(x, y)
        many.learn_many(pd.DataFrame([x]), pd.DataFrame([y]))
    a, b = model_state(one), model_state(many)
    assert a["meta"] == b["meta"]
    for name in a["arrays"]:
        np.testing.assert_allclose(a["arrays"][name], b["arrays"][name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("hidden", [(), (6,), (6, 5)])
def test_the_batch_gradient_is_the_mean_of_the_rows_gradients(hidden):
    """With SGD, one batch step moves the first-order parameters (the trunk and the heads on
    its layers) by the mean of the rows' single steps."""
    from stream_mtl.backends.init import initial_trunk

    rng = np.random.default_rng(4)
    start = NumpyBackend(hidden=hidden, optimizer="sgd", lr=0.1, dtype="float64")
    start.load_trunk(initial_trunk(rng, hidden, "relu"))
    start.grow_inputs(rng.normal(size=(5, hidden[0] if hidden else 0)))
    for task, kind, size in [("r", "regression", 1), ("b", "binary", 1), ("m", "multiclass", 3)]:
        start.set_head(task, kind, size)
    state = start.state()
    state.update({k: rng.normal(size=v.shape) for k, v in state.items() if "head" in k})
    start.load_state(state)
    X = rng.normal(size=(16, 5))
    targets = np.column_stack([rng.normal(size=16), rng.integers(0, 2, 16), rng.integers(0, 3, 16)])
    targets[::3, 1] = np.nan
    weights, trunk = np.array([1.0, 0.5, 2.0]), np.array([1.0, 0.3, 1.0])

    deltas = []
    for row, target in zip(X, targets):
        single = copy.deepcopy(start)
        as_list = [
            None if np.isnan(t) else (int(t) if k == 2 else float(t)) for k, t in enumerate(target)
        ]
        single.step_one(row, as_list, weights, trunk)
        deltas.append({k: single.state()[k] - state[k] for k in state})
    batch = copy.deepcopy(start)
    batch.step_many(X, targets, weights, trunk)
    for name in (k for k in state if k.startswith("param.")):
        expected = np.mean([d[name] for d in deltas], axis=0)
        # (a copied backend once stepped copies of its views: nothing moved, and 0 == 0)
        assert np.abs(expected).max() > 1e-6, f"{name} never moved"
        np.testing.assert_allclose(batch.state()[name] - state[name], expected, atol=1e-12)


def test_learn_many_then_learn_one_keeps_feature_positions():
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(8,), seed=0)
    rows = _rows(20)
    model.learn_many(
        pd.DataFrame([x for x, _ in rows]).fillna(0.0), pd.DataFrame([y for _, y in rows])
    )
    names = list(model._encoder.names)
    model.learn_one({"zzz": 1.0, "a": 0.5}, {"price": 1.0})
    assert model._encoder.names == [*names, "zzz"]


def test_batch_and_loop_learn_to_similar_quality():
    rows = _rows(2000, seed=5)
    held_out = _rows(200, seed=6)
    loop = MultiTaskLearner(tasks=mixed_tasks(), hidden=(16,), seed=0, lr=0.01)
    batch = copy.deepcopy(loop)
    for x, y in rows:
        loop.learn_one({"a": x["a"], "plan": x["plan"]}, y)
    for i in range(0, len(rows), 8):
        chunk = rows[i : i + 8]
        batch.learn_many(
            pd.DataFrame([{"a": x["a"], "plan": x["plan"]} for x, _ in chunk]),
            pd.DataFrame([y for _, y in chunk]),
        )

    def error(model):
        return np.mean([abs(model.predict_one(x)["price"] - y["price"]) for x, y in held_out])

    assert error(batch) < 2.0 and error(loop) < 2.0  # price = 100 + 10 a: both learned it
