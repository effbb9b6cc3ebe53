"""Every bad input raises an error that names the culprit, and changes nothing."""

from __future__ import annotations

import contextlib
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import assert_same_state, model_state

from stream_mtl import InvalidInput, InvalidInputType

BAD_ONE = [
    ({"a": float("nan")}, {"price": 1.0}, InvalidInput, "'a' is NaN"),
    ({"a": float("inf")}, {"price": 1.0}, InvalidInput, "'a' is infinite"),
    ({"a": 10**400}, {"price": 1.0}, InvalidInput, "'a' is an integer too large for a float"),
    ({"a": 1.0, "b": [1, 2]}, {"price": 1.0}, InvalidInputType, "'b'"),
    ({}, {"price": 1.0}, InvalidInput, "empty"),
    ([("a", 1.0)], {"price": 1.0}, InvalidInputType, "dict"),
    ({"a": None}, {"price": 1.0}, InvalidInput, "empty"),
    ({("a", "b"): 1.0}, {"price": 1.0}, InvalidInputType, "feature name"),
    ({"a": 1.0}, {"prize": 1.0}, InvalidInput, "unknown task 'prize'"),
    ({"a": 1.0}, {"price": "cheap"}, InvalidInputType, "regression task 'price'"),
    ({"a": 1.0}, {"price": True}, InvalidInputType, "regression task 'price'"),
    ({"a": 1.0}, {"price": float("inf")}, InvalidInput, "'price' is infinite"),
    ({"a": 1.0}, {"price": -(10**400)}, InvalidInput, "'price' is an integer too large"),
    ({"a": 1.0}, {"segment": 10**30}, InvalidInput, "'segment' is an integer beyond 64 bits"),
    ({"a": 1.0}, {"churn": 2}, InvalidInput, "binary task 'churn'"),
    ({"a": 1.0}, {"churn": "yes"}, InvalidInputType, "binary task 'churn'"),
    ({"a": 1.0}, {"segment": 1.5}, InvalidInput, "multiclass task 'segment'"),
    ({"a": 1.0}, {"segment": ["hi"]}, InvalidInputType, "multiclass task 'segment'"),
    ({"a": 1.0}, [1.0], InvalidInputType, "labels must be a dict"),
    # a bad label next to good ones: nothing at all is learned
    ({"a": 1.0, "plan": "z"}, {"price": 1.0, "segment": "new", "churn": 3}, InvalidInput, "churn"),
    # a bad feature next to a new class and a new feature: nothing at all is learned
    ({"new": 1.0, "a": float("nan")}, {"segment": "brand-new"}, InvalidInput, "'a' is NaN"),
]


@pytest.mark.parametrize(("x", "y", "error", "message"), BAD_ONE)
def test_learn_one_rejects_bad_input_and_changes_nothing(trained_model, x, y, error, message):
    before = model_state(trained_model)
    with pytest.raises(error, match=message):
        trained_model.learn_one(x, y)
    assert_same_state(before, model_state(trained_model))


@pytest.mark.parametrize(("x", "y", "error", "message"), BAD_ONE[:8])
def test_predict_one_rejects_bad_features(trained_model, x, y, error, message):
    before = model_state(trained_model)
    with pytest.raises(error, match=message):
        trained_model.predict_one(x)
    with pytest.raises(error, match=message):
        trained_model.predict_proba_one(x)
    assert_same_state(before, model_state(trained_model))


GOOD_X = pd.DataFrame({"a": [0.1, 0.2, 0.3], "b": [1.0, 0.0, -1.0], "plan": ["x", "y", "x"]})
GOOD_Y = pd.DataFrame({"price": [1.0, 2.0, 3.0], "churn": [True, False, True]})

BAD_MANY = [
    (GOOD_X.assign(a=[0.1, np.nan, 0.3]), GOOD_Y, InvalidInput, "'a' is NaN in row 1"),
    (GOOD_X.assign(a=[0.1, np.inf, 0.3]), GOOD_Y, InvalidInput, "'a' is infinite in row 1"),
    (GOOD_X.assign(plan=["x", 3, "y"]), GOOD_Y, InvalidInputType, "'plan'"),
    (GOOD_X, GOOD_Y.assign(prize=[1.0, 2.0, 3.0]), InvalidInput, "unknown task 'prize'"),
    (GOOD_X, GOOD_Y.assign(churn=[1, 5, 0]), InvalidInput, "binary task 'churn'"),
    (GOOD_X, GOOD_Y.assign(price=["a", "b", "c"]), InvalidInputType, "regression task 'price'"),
    (GOOD_X, GOOD_Y.iloc[:2], InvalidInput, "have 2 rows; the features have 3"),
    (GOOD_X.to_dict(), GOOD_Y, InvalidInputType, "DataFrame"),
    (GOOD_X.to_numpy()[:, 0], GOOD_Y, InvalidInput, "2-D"),
    (GOOD_X, [1, 2, 3], InvalidInputType, "one column per task"),
]


@pytest.mark.parametrize(("X", "Y", "error", "message"), BAD_MANY)
def test_learn_many_rejects_bad_input_and_changes_nothing(trained_model, X, Y, error, message):
    before = model_state(trained_model)
    with pytest.raises(error, match=message):
        trained_model.learn_many(X, Y)
    assert_same_state(before, model_state(trained_model))


def test_add_task_rejects_a_duplicate_or_a_non_task(trained_model):
    from stream_mtl import Regression

    before = model_state(trained_model)
    with pytest.raises(InvalidInput, match="'price' already exists"):
        trained_model.add_task("price", Regression())
    with pytest.raises(InvalidInputType, match="'margin'"):
        trained_model.add_task("margin", "regression")
    with pytest.raises(InvalidInputType, match="non-empty strings"):
        trained_model.add_task("", Regression())
    assert_same_state(before, model_state(trained_model))


def _all_finite(model) -> bool:
    arrays = [a for a in model_state(model)["arrays"].values() if a.dtype.kind == "f"]
    assert arrays
    return all(np.isfinite(a).all() for a in arrays)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_no_magnitude_of_feature_or_label_can_poison_the_model(backend):
    from stream_mtl import MultiTaskLearner, Regression

    rng = np.random.default_rng(0)

    def clean(n):
        for _ in range(n):
            x = {"a": float(rng.normal()), "b": float(rng.normal())}
            yield x, {"price": 2 * x["a"] + x["b"]}

    for magnitude in (1e3, 1e10, 1e15, 1e16, 1e100, 1e154, 1e200, 1e308):
        model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(8,), backend=backend)
        for x, y in clean(50):
            model.learn_one(x, y)
        for x, y in (
            ({"a": magnitude, "b": 0.0}, {"price": 1.0}),
            ({"a": 0.1, "b": 0.0}, {"price": magnitude}),
            ({"a": -magnitude, "b": 0.0}, {"price": -magnitude}),
        ):
            before = model_state(model)
            try:
                model.learn_one(x, y)
            except InvalidInput as error:
                assert magnitude > 1e15 and "beyond max_magnitude=1e+15" in str(error)
                assert_same_state(before, model_state(model))
            frame = pd.DataFrame([x, *({"a": 0.0, "b": 0.0} for _ in range(3))])
            labels = pd.DataFrame([y, *({"price": 0.0} for _ in range(3))])
            with pytest.raises(InvalidInput) if magnitude > 1e15 else contextlib.nullcontext():
                model.learn_many(frame, labels)
        for x, y in clean(100):
            model.learn_one(x, y)
        assert _all_finite(model), magnitude
        assert all(np.isfinite(v) for v in model.predict_one({"a": 0.5, "b": -0.5}).values())


def test_the_known_schemas_fast_check_refuses_what_the_full_check_refuses():
    """Rows of the schema learned last are checked at the cost of one sum: values whose
    magnitudes add up past max_magnitude, each within it, are still taken; NaN, an
    infinity and one value beyond the bound are refused, naming the feature."""
    from stream_mtl import MultiTaskLearner, Regression

    model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,), max_magnitude=1e15, seed=0)
    model.learn_one({"a": 1.0, "b": 2.0, "c": 3.0}, {"y": 1.0})
    model.learn_one({"a": 9e14, "b": -9e14, "c": 9e14}, {"y": 1.0})  # sum 2.7e15: taken
    assert model.n_learned == {"y": 2}
    for value, wording in (
        (float("nan"), "feature 'b' is NaN"),
        (float("inf"), "feature 'b' is infinite"),
        (-2e15, "feature 'b' is -2e+15, beyond max_magnitude"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(wording)):
            model.learn_one({"a": 1.0, "b": value, "c": 3.0}, {"y": 1.0})
        with pytest.raises(InvalidInput, match=re.escape(wording)):
            model.predict_one({"a": 1.0, "b": value, "c": 3.0})
    assert model.n_learned == {"y": 2}


def test_an_encoder_without_a_bound_still_refuses_infinite_features():
    from stream_mtl.features import FeatureEncoder

    encoder = FeatureEncoder()  # max_magnitude=inf
    encoder.learn_one({"a": 1.0, "b": 2.0})
    for x in ({"a": math.inf, "b": 2.0}, {"a": 1.0, "b": -math.inf}, {"a": "text", "b": math.inf}):
        with pytest.raises(InvalidInput, match="is infinite; features must be finite"):
            encoder.check_one(x)
        with pytest.raises(InvalidInput, match="is infinite; features must be finite"):
            encoder.learn_one(x)
    assert encoder.moments.count.tolist() == [1.0, 1.0]


def test_max_magnitude_is_bounded_where_squares_would_overflow():
    from stream_mtl import MultiTaskLearner, Regression

    MultiTaskLearner(tasks={"y": Regression()}, max_magnitude=1e100)
    for bad in (1e101, float("inf"), 0, -1.0, True):
        with pytest.raises(InvalidInput, match="max_magnitude must be a positive number up to"):
            MultiTaskLearner(tasks={"y": Regression()}, max_magnitude=bad)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_step_that_leaves_a_parameter_non_finite_is_rolled_back_and_never_saved(
    backend, tmp_path
):
    """A learning rate of 1e38 makes float32 parameters overflow within a few steps (and
    NumPy warn of it)."""
    from stream_mtl import Binary, MultiTaskLearner, Regression

    warnings.simplefilter("ignore", RuntimeWarning)
    rng = np.random.default_rng(0)
    model = MultiTaskLearner(
        tasks={"price": Regression(), "churn": Binary()},
        hidden=(8,),
        backend=backend,
        optimizer="sgd",
        lr=1e38,
        seed=0,
    )
    for _ in range(30):
        a = float(rng.normal())
        model.learn_one({"a": a, "b": 1.0}, {"price": 3 * a, "churn": a > 0})
        assert model._backend.finite()
    frame = pd.DataFrame({"a": rng.normal(size=8), "b": 1.0})
    model.learn_many(frame, pd.DataFrame({"price": 3 * frame["a"], "churn": frame["a"] > 0}))
    rolled_back = model.rolled_back
    assert rolled_back["rollbacks"] >= 1 and rolled_back["steps_lost"] >= rolled_back["rollbacks"]
    assert _all_finite(model)
    assert all(
        np.isfinite(v)
        for v in model.predict_one({"a": 0.5, "b": 1.0}).values()
        if isinstance(v, float)
    )
    model.save(tmp_path / "model.ckpt")
    again = MultiTaskLearner.load(tmp_path / "model.ckpt")
    assert _all_finite(again) and again.rolled_back == rolled_back


def test_max_features_bounds_the_encoder_and_a_refused_row_changes_nothing():
    from stream_mtl import MultiTaskLearner, Regression

    model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,), max_features=4)
    model.learn_one({"a": 1.0, "b": 2.0, "colour": "red"}, {"price": 1.0})
    before = model_state(model)
    x = {"a": 1.0, "colour": "blue", "c": 3.0}  # two new: colour=blue and c
    message = r"feature 'c' would be distinct feature number 5, beyond max_features=4"
    for call in (lambda: model.check_one(x), lambda: model.learn_one(x, {"price": 2.0})):
        with pytest.raises(InvalidInput, match=message):
            call()
    frame = pd.DataFrame({"a": [1.0, 2.0], "d": [0.0, 1.0], "e": [1.0, 1.0]})
    with pytest.raises(InvalidInput, match="'e' would be distinct feature number 5"):
        model.learn_many(frame, pd.DataFrame({"price": [1.0, 2.0]}))
    with pytest.raises(InvalidInput, match="beyond max_features=4"):
        model.check_many(frame)
    model.predict_one({"a": 1.0, "z": 5.0, "y": "new"})  # prediction never registers
    assert_same_state(before, model_state(model))
    model.learn_one({"a": 2.0, "colour": "blue"}, {"price": 2.0})  # the last room
    assert model._encoder.n_features == 4
    with pytest.raises(InvalidInput, match="'colour=green' would be distinct feature number 5"):
        model.learn_one({"colour": "green"}, {"price": 2.0})
    for bad in (0, 2.5, True, None):
        with pytest.raises(InvalidInput, match="max_features must be a positive integer"):
            MultiTaskLearner(tasks={"price": Regression()}, max_features=bad)


def test_max_classes_bounds_a_multiclass_task_and_a_refused_label_changes_nothing():
    from stream_mtl import Multiclass, MultiTaskLearner

    model = MultiTaskLearner(tasks={"kind": Multiclass(max_classes=2)}, hidden=(4,))
    model.learn_one({"a": 1.0}, {"kind": "x"})
    before = model_state(model)
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    with pytest.raises(InvalidInput, match="would be class number 3, beyond its max_classes=2"):
        model.learn_many(frame, pd.DataFrame({"kind": ["y", "z", "y"]}))
    model.learn_one({"a": 2.0}, {"kind": "y"})
    for call in (
        lambda: model.check_one({"a": 1.0}, {"kind": "z"}),
        lambda: model.learn_one({"a": 1.0}, {"kind": "z"}),
    ):
        with pytest.raises(InvalidInput, match="'kind' would be class number 3, beyond its max"):
            call()
    model.learn_one({"a": 2.0}, {"kind": "x"})  # known classes are always welcome
    assert model._outputs.classes["kind"] == ["x", "y"]
    with pytest.raises(InvalidInput, match="max_classes must be a positive integer"):
        Multiclass(max_classes=0)
    assert before["meta"]["classes"] == {"kind": ["x"]}


def test_a_class_label_that_is_not_valid_unicode_is_refused():
    from stream_mtl import Multiclass, MultiTaskLearner

    model = MultiTaskLearner(tasks={"kind": Multiclass()}, hidden=(4,))
    before = model_state(model)
    with pytest.raises(InvalidInput, match="is not valid Unicode text"):
        model.learn_one({"a": 1.0}, {"kind": "bad\ud800"})
    frame = pd.DataFrame({"a": [1.0]})
    with pytest.raises(InvalidInput, match="is not valid Unicode text"):
        model.learn_many(frame, pd.DataFrame({"kind": ["bad\udfff"]}))
    assert_same_state(before, model_state(model))
    model.learn_one({"a": 1.0}, {"kind": "café"})
    assert model.predict_one({"a": 1.0}) == {"kind": "café"}


def test_a_numpy_integer_feature_name_is_learned_as_the_int_it_equals_and_saves(tmp_path):
    from stream_mtl import MultiTaskLearner, Regression

    model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,))
    model.learn_one({np.int64(7): 1.0, "a": 2.0}, {"price": 1.0})
    model.learn_one({7: 2.0, "a": 1.0}, {"price": 2.0})  # the same feature
    assert model._encoder.names == [7, "a"] and type(model._encoder.names[0]) is int
    model.save(tmp_path / "model.ckpt")
    assert MultiTaskLearner.load(tmp_path / "model.ckpt")._encoder.names == [7, "a"]
