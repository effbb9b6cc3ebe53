"""MultiTaskLearner is a well-behaved River estimator, on River's checks and ours."""

from __future__ import annotations

import copy
import itertools
import tracemalloc

import pytest
from river import checks, datasets, evaluate, metrics
from river.checks import common

from stream_mtl import MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.learner import RIVER_DATASET_CHECKS


@pytest.mark.parametrize("params", list(MultiTaskLearner._unit_test_params()))
def test_passes_rivers_check_estimator(params):
    checks.check_estimator(MultiTaskLearner(**params))


class _AsTasks:
    """A River dataset as a multi-task stream: y becomes {"y": y, "flag": y > median}."""

    def __init__(self, n: int = 200) -> None:
        self.rows = list(itertools.islice(datasets.TrumpApproval(), n))

    def __iter__(self):
        for x, y in self.rows:
            yield x, {"y": y, "flag": y > 42.0}


@pytest.mark.parametrize("check", RIVER_DATASET_CHECKS)
def test_passes_rivers_dataset_checks_on_a_multi_task_stream(check):
    from stream_mtl import Binary

    model = MultiTaskLearner(tasks={"y": Regression(), "flag": Binary()}, hidden=(8,), seed=1)
    getattr(common, check)(copy.deepcopy(model), _AsTasks())


def test_rivers_progressive_validation_scores_it_with_rivers_multi_output_metrics():
    from stream_mtl import Binary

    model = MultiTaskLearner(tasks={"y": Regression(), "flag": Binary()}, hidden=(8,), seed=1)
    rows = list(_AsTasks())
    regression_only = [(x, {"y": y["y"]}) for x, y in rows]
    flags_only = [(x, {"flag": y["flag"]}) for x, y in rows]

    mae = evaluate.progressive_val_score(
        regression_only, model.clone(), metrics.multioutput.MicroAverage(metrics.MAE())
    )
    accuracy = evaluate.progressive_val_score(
        flags_only, model.clone(), metrics.multioutput.PerOutput(metrics.Accuracy())
    )

    by_hand, mae_by_hand = model.clone(), metrics.MAE()
    for x, y in regression_only:
        mae_by_hand.update(y["y"], by_hand.predict_one(x)["y"])
        by_hand.learn_one(x, y)
    assert mae.get() == pytest.approx(mae_by_hand.get()) and mae.get() > 0
    assert 0.5 < accuracy.get()["flag"].get() <= 1.0


def test_every_constructor_argument_is_stored_under_its_own_name():
    model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(3,), lr=0.5, seed=9)
    params = model._get_params()
    assert params["hidden"] == (3,) and params["lr"] == 0.5 and params["seed"] == 9


def test_clone_is_a_fresh_model_with_the_same_parameters_and_added_tasks():
    from stream_mtl import Binary

    model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,), seed=3)
    model.add_task("flag", Binary())
    for obs in SyntheticStream(n=50, seed=0, tasks={"y": "regression", "flag": "binary"}):
        model.learn_one(obs.x, obs.y)
    clone = model.clone()
    assert list(clone.tasks) == ["y", "flag"]
    assert clone.n_learned == {"y": 0, "flag": 0}
    for obs in SyntheticStream(n=20, seed=1, tasks={"y": "regression", "flag": "binary"}):
        clone.learn_one(obs.x, obs.y)
    assert model.n_learned == {"y": 50, "flag": 50}


def test_memory_stays_flat_over_a_long_stream():
    model = MultiTaskLearner(tasks={"a": Regression(), "b": Regression()}, hidden=(16,), seed=0)
    stream = iter(SyntheticStream(n=12_300, seed=0, tasks={"a": "regression", "b": "regression"}))
    for obs in itertools.islice(stream, 2_000):
        model.predict_one(obs.x)
        model.learn_one(obs.x, obs.y)
    tracemalloc.start()
    # Buffers replaced now and then (the finite guard's copy, every 256 steps) are freed
    # untraced if they were made before tracing began: let each be replaced once first.
    for obs in itertools.islice(stream, 300):
        model.predict_one(obs.x)
        model.learn_one(obs.x, obs.y)
    start, _ = tracemalloc.get_traced_memory()
    for obs in itertools.islice(stream, 10_000):
        model.predict_one(obs.x)
        model.learn_one(obs.x, obs.y)
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert end - start < 64 * 1024, f"memory grew by {end - start} bytes over 10,000 observations"
