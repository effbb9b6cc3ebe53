"""Prequential evaluation: test then train, baselines in the same run, honest reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from river import metrics

from stream_mtl import Binary, MultiTaskLearner, Observation, Regression
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.evaluate import iter_prequential, prequential

TASKS = {"a": "regression", "flag": "binary"}


def _model(**params) -> MultiTaskLearner:
    return MultiTaskLearner(tasks={"a": Regression(), "flag": Binary()}, hidden=(8,), seed=0)


def _stream(n: int = 600, seed: int = 0) -> list[Observation]:
    return list(SyntheticStream(tasks=TASKS, n=n, label_share=0.5, seed=seed))


def test_each_observation_is_predicted_before_it_is_learned():
    observations = _stream()
    by_hand, model = _model(), _model()
    mae = metrics.MAE()
    for obs in observations:
        prediction = by_hand.predict_one(obs.x)
        if "a" in obs.y:
            mae.update(obs.y["a"], prediction["a"])
        by_hand.learn_one(obs.x, obs.y)
    report = prequential(model, observations, every=100, progress=False, baselines=())
    assert report.metrics["a"]["MAE"] == pytest.approx(mae.get(), rel=1e-12)
    assert model.n_learned == by_hand.n_learned


def test_rolling_metrics_cover_the_last_window_beside_the_overall_ones():
    from river import utils

    observations = _stream(600)
    by_hand, model = _model(), _model()
    rolling = [
        utils.Rolling(metrics.MAE, window_size=200),
        utils.Rolling(metrics.Accuracy, window_size=200),
    ]
    expected = []
    for i, obs in enumerate(observations, start=1):
        prediction = by_hand.predict_one(obs.x)
        for metric, task in zip(rolling, ("a", "flag")):
            if task in obs.y:
                metric.update(obs.y[task], prediction[task])
        by_hand.learn_one(obs.x, obs.y)
        if i % 200 == 0:
            expected.append([metric.get() for metric in rolling])
    report = prequential(model, observations, every=200, progress=False, baselines=())
    assert [w["step"] for w in report.windows] == [200, 400, 600]
    assert set(report.windows[-1]["flag"]) == {"Accuracy", "F1", "LogLoss", "ROCAUC"}
    assert report.windows[-1]["a"]["MAE"] != report.metrics["a"]["MAE"]
    got = [[w["a"]["MAE"], w["flag"]["Accuracy"]] for w in report.windows]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_baselines_run_on_the_same_stream_in_the_same_call():
    observations = _stream(800)
    report = prequential(_model(), observations, every=200, progress=False)
    assert set(report.baselines) == {"single_task", "linear", "river_linear"}
    for baseline in report.baselines.values():
        assert set(baseline["metrics"]) == {"a", "flag"}
        assert len(baseline["windows"]) == len(report.windows)
        assert baseline["throughput"] > 0
    assert report.baselines["single_task"]["metrics"]["a"]["MAE"] != report.metrics["a"]["MAE"]


def test_the_verdict_says_per_metric_whether_the_model_is_best_or_who_beats_it():
    report = prequential(_model(), _stream(400), every=200, progress=False)
    lines = report.verdict().splitlines()
    metrics = {m for task in report.metrics.values() for m in task}  # a regression, a binary
    assert len(lines) == len(metrics)
    for line in lines:
        assert "the model is best" in line or "is behind" in line


def test_a_torch_model_is_evaluated_in_mini_batches_each_predicted_then_learned():
    pytest.importorskip("torch")
    observations = _stream(640)
    by_hand = MultiTaskLearner(
        tasks={"a": Regression(), "flag": Binary()}, hidden=(8,), seed=0, backend="torch"
    )
    model = by_hand.clone()
    mae = metrics.MAE()
    for start in range(0, 640, 64):
        batch = observations[start : start + 64]
        frame = pd.DataFrame([obs.x for obs in batch])
        predicted = by_hand.predict_many(frame)
        for obs, guess in zip(batch, predicted["a"]):
            if "a" in obs.y:
                mae.update(obs.y["a"], guess)
        by_hand.learn_many(frame, pd.DataFrame([obs.y for obs in batch]))
    report = prequential(model, observations, progress=False, baselines=(), batch_size=64)
    assert report.config["batch_size"] == 64 and "learn_many" in report.config["learning"]
    assert report.metrics["a"]["MAE"] == pytest.approx(mae.get(), rel=1e-6)
    assert model.n_learned == by_hand.n_learned
    assert report.n_observations == 640


def test_a_fixed_delay_learns_each_label_that_many_observations_later():
    observations = _stream(300)
    model = _model()
    learned_at = []
    original = model.learn_one

    def spy(x, y):
        learned_at.append(len(seen))
        original(x, y)

    model.learn_one = spy
    seen = []
    original_predict = model.predict_one
    model.predict_one = lambda x: seen.append(1) or original_predict(x)
    prequential(model, observations, delay=50, every=100, progress=False, baselines=())
    assert learned_at[:3] == [51, 52, 53]  # the first label is learned after 51 predictions
    assert len(learned_at) == 300  # and every label is learned by the end


def test_late_labels_join_their_features_by_key_and_unknown_keys_are_counted():
    observations = _stream(200)
    stream = []
    for i, obs in enumerate(observations):
        stream.append(Observation(obs.x, None, key=i))
        if i >= 5:
            stream.append(Observation(None, observations[i - 5].y, key=i - 5))
    stream.append(Observation(None, {"a": 1.0}, key="never seen"))
    model = _model()
    report = prequential(model, stream, every=100, progress=False, on_error="skip")
    assert report.n_observations == 200
    assert sum(model.n_learned.values()) == sum(len(o.y) for o in observations[:-5])
    assert report.rejected == {"labels for an unknown or expired key": 1}


def test_bad_observations_are_set_aside_and_counted_when_asked():
    stream = _stream(300)
    stream[10] = Observation({"x0": math.nan}, {"a": 1.0})
    stream[20] = Observation(stream[20].x, {"flag": "maybe"})
    model = _model()
    report = prequential(model, stream, every=100, progress=False, on_error="skip")
    assert report.n_observations == 298
    assert sum(report.rejected.values()) == 2
    with pytest.raises(ValueError, match="x0"):
        prequential(_model(), stream, every=100, progress=False)


def test_the_report_names_a_connectors_stream_by_its_settings():
    stream = SyntheticStream(tasks=TASKS, n=200, seed=3)
    report = prequential(_model(), stream, progress=False, baselines=())
    assert report.config["stream"].startswith("SyntheticStream(n=200, ")
    assert "seed=3" in report.config["stream"]


def test_one_mix_up_is_one_reason_however_many_values_it_takes():
    stream = _stream(300)
    for row, label in zip(range(10, 70, 10), ["yes", "no", "maybe", "y", "n", "ok"]):
        stream[row] = Observation(stream[row].x, {"flag": label})
    report = prequential(_model(), stream, progress=False, baselines=(), on_error="skip")
    assert report.rejected == {"label of the wrong type for binary task 'flag'": 6}


def test_the_iterator_form_yields_the_run_so_far_at_every_checkpoint():
    observations = _stream(500)
    reports = list(
        iter_prequential(_model(), observations, every=200, progress=False, baselines=())
    )
    assert [r.n_observations for r in reports] == [200, 400, 500]
    assert [len(r.windows) for r in reports] == [1, 2, 2]
    final = prequential(_model(), observations, every=200, progress=False, baselines=())
    assert reports[-1].metrics == final.metrics


def test_a_saved_report_is_strict_json_that_opens_with_its_configuration(tmp_path):
    report = prequential(_model(), _stream(400), every=100, progress=False)
    path = report.save(tmp_path)
    content = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert next(iter(content)) == "config"
    assert content["config"]["every"] == 100
    assert content["config"]["model"]["class"] == "stream_mtl.learner.MultiTaskLearner"
    weighting = content["config"]["model"]["params"]["weighting"]
    assert weighting["class"] == "stream_mtl.weighting.drift.DriftAware"  # not None
    assert weighting["params"]["base"]["class"] == "stream_mtl.weighting.dwa.DWA"
    assert content["config"]["stream"] == "list of 400 items"
    assert content["memory_bytes"] > 0
    assert len(content["task_affinity"]["matrix"]) == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "depth.png", "rolling_metrics.png", "task_affinity.png", "task_weights.png",
    ]  # fmt: skip
    assert len(content["mixture"]) == 4 and set(content["mixture"][-1]["a"]) >= {"layer1"}


def test_a_long_run_shows_a_progress_bar(capsys):
    prequential(_model(), _stream(300), every=100, progress=True, baselines=())
    assert "prequential" in capsys.readouterr().err


def test_the_report_table_sums_up_many_tasks():
    tasks = {f"t{i}": "regression" for i in range(15)}
    stream = SyntheticStream(tasks=tasks, n=300, label_share=1 / 15, seed=0)
    model = MultiTaskLearner(tasks={t: Regression() for t in tasks}, hidden=(8,), seed=0)
    table = prequential(model, stream, every=100, progress=False).table()
    assert "mean of 15" in table and "model wins" in table
    assert np.all([len(line) > 0 for line in table.splitlines()])


def test_the_report_table_keeps_long_task_names_in_their_column():
    tasks = {"c-class-flares-per-day": "regression", "m": "regression"}
    stream = SyntheticStream(tasks=tasks, n=200, seed=0)
    model = MultiTaskLearner(tasks={t: Regression() for t in tasks}, hidden=(8,), seed=0)
    lines = prequential(model, stream, every=100, progress=False, baselines=()).table().splitlines()
    starts = {line.index("MAE") for line in lines[1:] if "MAE" in line}
    assert len(starts) == 1 and lines[1].startswith("c-class-flares-per-day ")


def test_features_whose_labels_never_come_are_counted_once_they_expire(monkeypatch):
    import functools
    import importlib

    module = importlib.import_module("stream_mtl.evaluate.prequential")
    monkeypatch.setattr(module, "StreamStep", functools.partial(module.StreamStep, label_wait=3))
    observations = _stream(10)
    stream = [Observation(obs.x, None, key=i) for i, obs in enumerate(observations)]
    stream.append(Observation(None, {"a": 1.0}, key=0))  # too late: key 0 has expired
    report = prequential(_model(), stream, progress=False, baselines=(), on_error="skip")
    assert report.rejected == {
        "features whose labels never came (expired by count)": 7,  # 10 held, 3 still waiting
        "labels for an unknown or expired key": 1,
    }


def test_the_plots_leave_the_process_matplotlib_backend_alone(tmp_path, fresh_python):
    backend = fresh_python(
        "import matplotlib; matplotlib.use('svg'); "
        "import stream_mtl.evaluate.plots; print(matplotlib.get_backend())"
    )
    assert backend == "svg"
    report = prequential(_model(), _stream(300), every=100, progress=False, baselines=())
    data = json.loads((report.save(tmp_path)).read_text())  # plots from the JSON alone
    from stream_mtl.evaluate.plots import save_plots

    assert {p.name for p in save_plots(data, tmp_path / "again")} >= {"rolling_metrics.png"}


def test_regression_errors_folded_in_blocks_equal_rivers_label_by_label(monkeypatch):
    from stream_mtl.evaluate import regression_errors
    from stream_mtl.evaluate.prequential import _Score

    monkeypatch.setattr(regression_errors, "BLOCK", 16)  # several blocks, merged
    rng = np.random.default_rng(0)
    chosen = {"a": [metrics.MAE(), metrics.MSE(), metrics.Accuracy(), metrics.RMSE(), metrics.R2()]}
    score = _Score(chosen, window=50, regression={"a"})
    assert [type(m) for m in score.per_label["a"]] == [metrics.Accuracy]  # the rest folded
    overall, window = ([m.clone() for m in chosen["a"]] for _ in range(2))
    for i in range(100):
        label = float(rng.normal(loc=5.0))
        prediction = None if i % 7 == 0 else label + float(rng.normal())  # some unpredicted
        score.update({"a": label}, {"a": prediction}, {})
        for metric in overall + (window if i >= 50 else []):
            if prediction is not None:
                metric.update(label, prediction)
    for got, river in ((score.summary(), overall), (score.summary(rolling=True), window)):
        assert list(got["a"]) == ["MAE", "MSE", "Accuracy", "RMSE", "R2"]  # in the given order
        assert got["a"] == pytest.approx({type(m).__name__: m.get() for m in river}, rel=1e-12)
    assert score.summary()["a"]["R2"] != score.summary(rolling=True)["a"]["R2"]


def test_folded_regression_errors_keep_rivers_edge_cases():
    from stream_mtl.evaluate.regression_errors import RegressionErrors

    def values(pairs) -> list[float]:
        errors = RegressionErrors(pairs)
        return [errors.value(kind) for kind in (metrics.MAE, metrics.R2)]

    assert values([]) == [0.0, 0.0]  # nothing yet
    assert values([(2.0, 1.0)]) == [1.0, 0.0]  # R2 needs two labels
    assert values([(2.0, 1.0), (3.0, 3.0)]) == [0.5, -1.0]  # 1 - 1 / 0.5
    assert values([(0.1, 0.0)] * 1000) == pytest.approx([0.1, 0.0])  # labels do not vary
    with pytest.raises(TypeError, match="Accuracy is not one of"):
        RegressionErrors().value(metrics.Accuracy)
