"""On a stream whose tasks share a non-linear structure, the model learns, and sharing helps."""

from __future__ import annotations

import numpy as np
import pytest

from stream_mtl import Binary, MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import SyntheticStream

TASKS = {"a": "regression", "b": "regression", "c": "regression", "flag": "binary"}


def _model(tasks: dict[str, str]) -> MultiTaskLearner:
    kinds = {"regression": Regression, "binary": Binary}
    return MultiTaskLearner(
        tasks={name: kinds[kind]() for name, kind in tasks.items()}, hidden=(64, 64), seed=0
    )


def _prequential_errors(models: dict, observations) -> dict[str, list[float]]:
    """Squared error (regression) or 0/1 error (binary) per task, tested then trained."""
    errors: dict[str, list[float]] = {name: [] for name in TASKS}
    for obs in observations:
        for name, label in obs.y.items():
            model = models[name]
            prediction = model.predict_one(obs.x)[name]
            errors[name].append(
                (prediction - label) ** 2
                if TASKS[name] == "regression"
                else float(prediction != label)
            )
        for learner in {id(m): m for m in models.values()}.values():
            learner.learn_one(obs.x, {k: v for k, v in obs.y.items() if k in learner.tasks})
    return errors


@pytest.fixture(scope="module")
def dense_run():
    observations = list(SyntheticStream(tasks=TASKS, n=12_000, seed=0))
    model = _model(TASKS)
    errors = _prequential_errors(dict.fromkeys(TASKS, model), observations)
    return observations, errors


def test_error_falls_well_below_predicting_the_mean(dense_run):
    observations, errors = dense_run
    for name, kind in TASKS.items():
        labels = np.array([obs.y[name] for obs in observations], dtype=float)
        late = np.mean(errors[name][-3000:])
        if kind == "regression":
            assert late < 0.25 * labels.var(), name
        else:
            assert late < 0.5 * min(labels.mean(), 1 - labels.mean()), name


def test_error_falls_below_the_best_linear_fit(dense_run):
    observations, errors = dense_run
    X = np.array([[obs.x[f"x{j}"] for j in range(20)] + [1.0] for obs in observations])
    for name in ("a", "b", "c"):
        labels = np.array([obs.y[name] for obs in observations])
        coef = np.linalg.lstsq(X, labels, rcond=None)[0]  # fitted on the whole stream, offline
        linear = np.mean((X @ coef - labels) ** 2)
        assert np.mean(errors[name][-3000:]) < 0.5 * linear, name


def test_sharing_beats_one_model_per_task_when_each_observation_has_one_label():
    observations = list(SyntheticStream(tasks=TASKS, n=5_000, label_share=0.25, seed=3))
    shared = _model(TASKS)
    separate = {name: _model({name: kind}) for name, kind in TASKS.items()}
    shared_errors = _prequential_errors(dict.fromkeys(TASKS, shared), observations)
    separate_errors = _prequential_errors(separate, observations)
    for name in TASKS:
        assert np.mean(shared_errors[name]) < np.mean(separate_errors[name]), name
