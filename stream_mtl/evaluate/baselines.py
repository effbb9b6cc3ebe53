"""Reference predictors that evaluations run beside the model, on the same stream.

- `MeanPredictor`: the floor; it uses the labels and nothing of the features.
- `SingleTaskModels`: one model of the same size per task, sharing nothing; the gain
  or loss of the multi-task model against it is the value of sharing.
- `RiverLinear`: River's linear model per task (scaled inputs), the usual online
  baseline.
- `SecondOrderLinear`: the model's own per-task linear heads alone: recursive
  least squares with forgetting (regression) or an online Newton step
  (classification) - the strongest cheap online linear learner, and the bar the
  multi-task model must clear on short streams.

Each takes `learn_one(x, y)` like a model, and `predict_one(x, tasks)` /
`predict_proba_one(x, tasks)` restricted to the tasks wanted (all when None), so that
an evaluation pays only for the predictions it scores.
"""

from __future__ import annotations

import collections
import math
import typing

from river import compose, linear_model, multiclass, preprocessing

from stream_mtl.tasks import BINARY, REGRESSION, Label, Task
from stream_mtl.weighting import Equal


class MeanPredictor:
    """Predicts each task's running mean (regression) or most frequent class so far.

    >>> from stream_mtl import Regression, Binary
    >>> baseline = MeanPredictor({"price": Regression(), "churn": Binary()})
    >>> baseline.learn_one({}, {"price": 2.0, "churn": True})
    >>> baseline.learn_one({}, {"price": 4.0})
    >>> baseline.predict_one({})
    {'price': 3.0, 'churn': True}
    >>> baseline.predict_proba_one({})
    {'churn': {True: 1.0}}
    """

    def __init__(self, tasks: dict[str, Task]) -> None:
        self.tasks = dict(tasks)
        self._sums = dict.fromkeys(tasks, 0.0)
        self._counts: dict[str, collections.Counter] = {
            name: collections.Counter() for name in tasks
        }

    def learn_one(self, x: dict, y: dict) -> None:
        for name, label in y.items():
            label = self.tasks[name].check_label(name, label)
            if label is None:
                continue
            if self.tasks[name].kind == REGRESSION:
                self._sums[name] += label
                self._counts[name]["n"] += 1
            else:
                self._counts[name][label] += 1

    def predict_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        prediction: dict[str, Label | None] = {}
        for name in self.tasks if tasks is None else tasks:
            counts = self._counts[name]
            if self.tasks[name].kind == REGRESSION:
                prediction[name] = self._sums[name] / counts["n"] if counts["n"] else 0.0
            else:
                prediction[name] = counts.most_common(1)[0][0] if counts else None
        return prediction

    def predict_proba_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        """Each classification task's class frequencies so far."""
        proba: dict[str, dict[Label, float]] = {}
        for name in self.tasks if tasks is None else tasks:
            if self.tasks[name].kind != REGRESSION:
                counts = self._counts[name]
                total = sum(counts.values())
                proba[name] = {label: n / total for label, n in counts.items()} if total else {}
        return proba


class SingleTaskModels:
    """One model per task, each the same size as `model` and learning its task alone.

    >>> from stream_mtl import MultiTaskLearner, Regression, Binary
    >>> model = MultiTaskLearner(tasks={"a": Regression(), "b": Binary()}, hidden=(8,), seed=0)
    >>> separate = SingleTaskModels(model)
    >>> separate.learn_one({"u": 1.0}, {"a": 2.0})
    >>> separate.models["a"].n_learned, separate.models["b"].n_learned
    ({'a': 1}, {'b': 0})
    >>> sorted(separate.predict_one({"u": 1.0}, ["a"]))
    ['a']
    """

    def __init__(self, model: typing.Any) -> None:
        params = {**model._get_params(), "sharing": "hard"}  # one task: nothing to share
        params["weighting"] = Equal()
        self.tasks = dict(model.tasks)
        self.models = {
            name: type(model)(**{**params, "tasks": {name: task.clone()}})
            for name, task in self.tasks.items()
        }

    def learn_one(self, x: dict, y: dict) -> None:
        for name, label in y.items():
            if label is not None and not (isinstance(label, float) and math.isnan(label)):
                self.models[name].learn_one(x, {name: label})

    def predict_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        return {
            name: self.models[name].predict_one(x)[name]
            for name in (self.tasks if tasks is None else tasks)
        }

    def predict_proba_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        return {
            name: self.models[name].predict_proba_one(x)[name]
            for name in (self.tasks if tasks is None else tasks)
            if self.tasks[name].kind != REGRESSION
        }


class SecondOrderLinear(SingleTaskModels):
    """One second-order linear model per task on the scaled inputs: `model`'s per-task
    linear heads alone (`hidden=()`, `share_linear=False`: no trunk, no sharing, no drift
    reaction).

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(8,), seed=0)
    >>> linear = SecondOrderLinear(model)
    >>> for i in range(50):
    ...     linear.learn_one({"u": i % 5}, {"a": 2.0 * (i % 5) + 1.0})
    >>> round(linear.predict_one({"u": 3})["a"], 2)
    7.0
    """

    def __init__(self, model: typing.Any) -> None:
        params = {**model._get_params(), "hidden": (), "share_linear": False, "sharing": "hard"}
        params["weighting"] = Equal()
        self.tasks = dict(model.tasks)
        self.models = {"all": type(model)(**{**params, "tasks": dict(self.tasks)})}

    def learn_one(self, x: dict, y: dict) -> None:
        self.models["all"].learn_one(x, y)

    def predict_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        prediction = self.models["all"].predict_one(x)
        return {name: prediction[name] for name in (self.tasks if tasks is None else tasks)}

    def predict_proba_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        proba = self.models["all"].predict_proba_one(x)
        return {
            name: proba[name] for name in (self.tasks if tasks is None else tasks) if name in proba
        }


def numeric_features(x: dict) -> dict[str, float]:
    """River-ready numbers: strings become `"f=v"` indicators, booleans 0/1.

    >>> numeric_features({"age": 3, "plan": "pro", "vip": True})
    {'age': 3.0, 'plan=pro': 1.0, 'vip': 1.0}
    """
    out = {}
    for name, value in x.items():
        if isinstance(value, str):
            out[f"{name}={value}"] = 1.0
        elif value is not None:
            out[name] = float(value)
    return out


class RiverLinear:
    """River's linear model per task on standardised inputs.

    Regression: `LinearRegression`; binary: `LogisticRegression`; multiclass:
    one-vs-rest `LogisticRegression`. Each behind its own `StandardScaler`.

    >>> from stream_mtl import Regression, Binary
    >>> linear = RiverLinear({"a": Regression(), "b": Binary()})
    >>> for i in range(200):
    ...     linear.learn_one({"u": i % 5}, {"a": 2.0 * (i % 5), "b": i % 5 > 2})
    >>> round(linear.predict_one({"u": 4})["a"]), linear.predict_one({"u": 4})["b"]
    (8, True)
    """

    def __init__(self, tasks: dict[str, Task]) -> None:
        self.tasks = dict(tasks)
        self.models = {name: self._model(task.kind) for name, task in self.tasks.items()}

    @staticmethod
    def _model(kind: str) -> compose.Pipeline:
        if kind == REGRESSION:
            head = linear_model.LinearRegression()
        elif kind == BINARY:
            head = linear_model.LogisticRegression()
        else:
            head = multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        return preprocessing.StandardScaler() | head

    def learn_one(self, x: dict, y: dict) -> None:
        features = numeric_features(x)
        for name, label in y.items():
            if label is None or (isinstance(label, float) and math.isnan(label)):
                continue
            self.models[name].learn_one(features, label)

    def predict_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        features = numeric_features(x)
        return {
            name: self.models[name].predict_one(features)
            for name in (self.tasks if tasks is None else tasks)
        }

    def predict_proba_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        features = numeric_features(x)
        return {
            name: self.models[name].predict_proba_one(features)
            for name in (self.tasks if tasks is None else tasks)
            if self.tasks[name].kind != REGRESSION
        }
