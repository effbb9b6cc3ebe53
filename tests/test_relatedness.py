"""The Relatedness strategy: auxiliary tasks weighted by their affinity to the main tasks."""

from __future__ import annotations

import numpy as np
import pytest

from stream_mtl import MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.evaluate import prequential
from stream_mtl.exceptions import InvalidInput
from stream_mtl.weighting import DriftAware, Relatedness

TASKS = {
    "main": "regression",
    "helps": "regression",
    "other1": "regression",
    "other2": "regression",
}
RELATIONS = {"other1": "unrelated", "other2": "unrelated"}


def _learn(weighting, n: int, seed: int = 0) -> MultiTaskLearner:
    model = MultiTaskLearner(
        tasks={t: Regression() for t in TASKS}, hidden=(32, 32), weighting=weighting, seed=seed
    )
    for obs in SyntheticStream(TASKS, relations=RELATIONS, n=n, seed=seed):
        model.learn_one(obs.x, obs.y)
    return model


@pytest.mark.parametrize("wrap", [False, True])
def test_the_related_auxiliary_keeps_its_weight_and_the_unrelated_ones_fade(wrap):
    strategy = Relatedness(main=["main"])
    model = _learn(DriftAware(strategy) if wrap else strategy, n=3000)
    weights = model.task_weights
    assert weights["main"] == 1.0
    assert weights["helps"] > 0.9
    assert weights["other1"] < 0.3 * weights["helps"]
    assert weights["other2"] < 0.3 * weights["helps"]
    related = model._weighting._base if wrap else model._weighting
    assert related.relatedness[1] > max(related.relatedness[2:]) + 0.1


def test_the_report_shows_the_auxiliaries_weights_move(tmp_path):
    model = MultiTaskLearner(
        tasks={t: Regression() for t in TASKS}, hidden=(32, 32), seed=0,
        weighting=Relatedness(main=["main"]),
    )  # fmt: skip
    stream = SyntheticStream(TASKS, relations=RELATIONS, n=3000, seed=0)
    report = prequential(model, stream, every=250, progress=False, baselines=())
    other1 = [w["other1"] for w in report.task_weights]
    assert max(other1) > 0.5 > 0.3 > other1[-1]  # it moved, and ended low
    last = report.task_weights[-1]
    assert last["other2"] < 0.3 and last["helps"] == 1.0 and last["main"] == 1.0
    report.save(tmp_path)
    assert (tmp_path / "task_weights.png").stat().st_size > 0


def test_its_state_survives_a_checkpoint(tmp_path):
    model = _learn(DriftAware(Relatedness(main=["main"])), n=600)
    model.save(tmp_path / "m.ckpt")
    loaded = MultiTaskLearner.load(tmp_path / "m.ckpt")
    assert loaded.task_weights == model.task_weights
    assert loaded.weighting.base.main == ["main"]


def test_an_auxiliary_never_measured_is_weighted_like_the_others():
    strategy = Relatedness(main=["a"])
    for task in "abc":
        strategy.add_task(task)
    assert strategy.step_weights().loss.tolist() == [1.0, 1.0, 1.0]
    strategy.observe_affinity(np.full((3, 3), np.nan))
    assert strategy.step_weights().loss.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"main": "a"}, "main must be"),
        ({"main": []}, "main must be"),
        ({"main": ["a"], "temperature": 0.0}, "temperature"),
    ],
)
def test_bad_settings_are_clear_errors(params, message):
    with pytest.raises(InvalidInput, match=message):
        Relatedness(**params)
