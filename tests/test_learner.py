"""MultiTaskLearner: the public behaviour DESIGN.md promises, one behaviour per test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_observation, mixed_tasks

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression
from stream_mtl.weighting import DWA, DriftAware, Equal


def test_predictions_have_the_type_of_each_task(trained_model):
    prediction = trained_model.predict_one({"a": 0.1, "b": -0.2, "plan": "x"})
    assert isinstance(prediction["price"], float)
    assert isinstance(prediction["churn"], bool)
    assert prediction["segment"] in ("hi", "lo")


def test_probabilities_cover_classification_tasks_and_sum_to_one(trained_model):
    proba = trained_model.predict_proba_one({"a": 0.1, "b": -0.2, "plan": "x"})
    assert set(proba) == {"churn", "segment"}
    assert set(proba["churn"]) == {False, True}
    assert set(proba["segment"]) == {"hi", "lo"}
    for distribution in proba.values():
        assert math.isclose(sum(distribution.values()), 1.0)


def test_regression_predictions_come_back_in_original_units():
    rng = np.random.default_rng(1)
    model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(), seed=0, lr=0.01)
    for _ in range(3000):
        x = {"u": float(rng.normal()), "v": float(rng.normal())}
        model.learn_one(x, {"y": 1000.0 + 50.0 * x["u"] - 20.0 * x["v"]})
    assert model.predict_one({"u": 1.0, "v": 1.0})["y"] == pytest.approx(1030.0, abs=1.0)


def test_untrained_model_predicts_neutral_values():
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(4,), seed=0)
    prediction = model.predict_one({"a": 1.0})
    assert prediction == {"price": 0.0, "churn": False, "segment": None}
    assert model.predict_proba_one({"a": 1.0}) == {"churn": {False: 0.5, True: 0.5}, "segment": {}}


def test_multiclass_head_grows_when_a_new_class_appears():
    model = MultiTaskLearner(tasks={"s": Multiclass()}, hidden=(4,), seed=0, lr=0.05)
    for _ in range(30):
        model.learn_one({"a": 1.0}, {"s": "first"})
    before = model.predict_proba_one({"a": 1.0})["s"]
    model.learn_one({"a": -1.0}, {"s": "second"})
    after = model.predict_proba_one({"a": 1.0})["s"]
    assert list(before) == ["first"] and list(after) == ["first", "second"]
    assert model.classes == {"s": ["first", "second"]}
    for _ in range(200):
        model.learn_one({"a": -1.0}, {"s": "second"})
        model.learn_one({"a": 1.0}, {"s": "first"})
    assert model.predict_one({"a": -1.0})["s"] == "second"


def test_an_absent_task_is_not_trained():
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(4,), seed=0)
    model.learn_one({"a": 1.0}, {"price": 3.0})
    model.learn_one({"a": 1.0}, {"price": 4.0, "churn": None, "segment": float("nan")})
    assert model.n_learned == {"price": 2, "churn": 0, "segment": 0}
    fresh = MultiTaskLearner(tasks=mixed_tasks(), hidden=(4,), seed=0)
    fresh.learn_one({"a": 1.0}, {})
    trained, untrained = model._backend.state(), fresh._backend.state()
    churn = [name for name in trained if ".churn." in name]
    assert len(churn) == 14  # the head on the trunk, its Adam moments; two linear, two top heads
    for name in churn:
        np.testing.assert_array_equal(trained[name], untrained[name])
    assert model.mixture["churn"] == fresh.mixture["churn"]


def test_an_observation_without_labels_updates_only_feature_statistics(trained_model):
    before = trained_model._backend.state()
    trained_model.learn_one({"a": 5.0, "b": 1.0}, {})
    after = trained_model._backend.state()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert trained_model._encoder.moments.count[0] == 51


def test_add_task_gives_a_fresh_head_that_learns():
    rng = np.random.default_rng(2)
    model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(8,), seed=0, lr=0.01)
    for _ in range(100):
        x, y = mixed_observation(rng)
        model.learn_one(x, {"price": y["price"]})
    model.add_task("churn", Binary())
    assert model.predict_proba_one({"a": 0.0, "b": 2.0})["churn"][True] == 0.5
    for _ in range(500):
        x, y = mixed_observation(rng)
        model.learn_one(x, {"churn": y["churn"]})
    assert model.predict_one({"a": 0.0, "b": 2.0})["churn"] is True
    assert model.predict_one({"a": 0.0, "b": -2.0})["churn"] is False
    assert isinstance(model.tasks["churn"], Binary)


def test_the_default_weighting_is_drift_aware_dwa(trained_model):
    assert isinstance(trained_model._weighting, DriftAware)
    assert isinstance(trained_model._weighting._base, DWA)
    weights = trained_model.task_weights
    assert list(weights) == ["price", "churn", "segment"]
    assert sum(weights.values()) == pytest.approx(3.0)


def test_equal_weighting_keeps_every_weight_at_one():
    rng = np.random.default_rng(0)
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(8,), weighting=Equal(), seed=0)
    for _ in range(50):
        model.learn_one(*mixed_observation(rng))
    assert model.task_weights == {"price": 1.0, "churn": 1.0, "segment": 1.0}


def test_new_features_grow_the_input_layer_with_zero_weights(trained_model):
    n_inputs = trained_model._backend.n_inputs
    before = trained_model.predict_one({"a": 0.3, "b": 0.1, "plan": "x"})
    trained_model.learn_one({"brand_new": 7.0}, {})
    assert trained_model._backend.n_inputs == n_inputs + 1
    assert not trained_model._backend.state()["param.trunk.0.weight"][-1].any()
    assert trained_model.predict_one({"a": 0.3, "b": 0.1, "plan": "x"}) == before


def test_string_features_become_indicators(trained_model):
    assert "plan=x" in trained_model._encoder.names and "plan=y" in trained_model._encoder.names


def test_learn_many_takes_dataframes_with_missing_labels():
    rng = np.random.default_rng(3)
    rows = [mixed_observation(rng) for _ in range(64)]
    X = pd.DataFrame([x for x, _ in rows])
    Y = pd.DataFrame([y for _, y in rows])
    Y["churn"] = Y["churn"].astype(object)
    Y.loc[::2, "churn"] = None
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(8,), seed=0)
    model.learn_many(X, Y)
    assert model.n_learned == {"price": 64, "churn": 32, "segment": 64}
    predictions = model.predict_many(X)
    assert list(predictions.columns) == ["price", "churn", "segment"]
    assert len(predictions) == 64
    # float32 products of one row and of a batch may differ in the last bit (BLAS kernels)
    batch, single = predictions.iloc[5].to_dict(), model.predict_one(rows[5][0])
    assert batch["price"] == pytest.approx(single.pop("price"), rel=1e-6)
    assert {k: v for k, v in batch.items() if k != "price"} == single


def test_predict_many_accepts_a_numpy_array():
    model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,), seed=0)
    X = np.random.default_rng(0).normal(size=(10, 3))
    model.learn_many(X, {"y": X[:, 0]})
    predictions = model.predict_many(X)
    assert predictions.shape == (10, 1)
    assert predictions.iloc[2, 0] == pytest.approx(
        model.predict_one({0: X[2, 0], 1: X[2, 1], 2: X[2, 2]})["y"]
    )


def test_predict_proba_many_matches_predict_proba_one(trained_model):
    X = pd.DataFrame([{"a": 0.5, "b": -1.0, "plan": "y"}, {"a": -0.5, "b": 1.0, "plan": "x"}])
    frames = trained_model.predict_proba_many(X)
    for i, row in enumerate(X.to_dict(orient="records")):
        expected = trained_model.predict_proba_one(row)
        for task, frame in frames.items():
            assert frame.iloc[i].to_dict() == pytest.approx(expected[task])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden": (0,)}, "hidden"),
        ({"backend": "jax"}, "backend"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"lr": -1.0}, "lr"),
        ({"dtype": "float16"}, "dtype"),
        ({"activation": "gelu"}, "activation"),
        ({"device": "cuda"}, "device"),
    ],
)
def test_bad_constructor_arguments_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        MultiTaskLearner(tasks={"y": Regression()}, **params)


def test_tasks_must_be_task_objects():
    with pytest.raises(TypeError, match="'y'"):
        MultiTaskLearner(tasks={"y": "regression"})
