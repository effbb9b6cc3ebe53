"""Prequential (test-then-train) evaluation: predict each observation, score it, then learn it."""

from __future__ import annotations

import collections
import json
import logging
import time
import typing
from collections.abc import Iterable
from pathlib import Path

from river import metrics as river_metrics
from river import utils

from stream_mtl.observation import Observation

logger = logging.getLogger(__name__)

Metrics = dict[str, list[river_metrics.base.Metric]]


class Report(typing.NamedTuple):
    """What a prequential run measured.

    - `metrics`: task -> metric name -> value over the whole run;
    - `windows`: one entry per `every` observations: the step and, per task, each metric
      over the last `every` labels (a rolling window);
    - `n_observations`, `seconds`, `throughput` (observations per second).
    """

    metrics: dict[str, dict[str, float]]
    windows: list[dict]
    n_observations: int
    seconds: float
    throughput: float
    drift_events: list
    task_weights: list[dict]

    def save(self, folder: str | Path) -> Path:
        """Write `report.json` into `folder` (created if needed); return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "report.json"
        content = self._asdict()
        content["drift_events"] = [list(event) for event in self.drift_events]
        path.write_text(json.dumps(content, indent=2))
        return path


def default_metrics(model: typing.Any) -> Metrics:
    """Each task's default River metrics (see `stream_mtl.tasks`)."""
    return {name: task.default_metrics() for name, task in model.tasks.items()}


def _rolling(metric: river_metrics.base.Metric, window: int) -> utils.Rolling:
    """A fresh copy of `metric` computed over the last `window` labels only."""
    fresh = metric.clone()
    params = {name: getattr(fresh, name) for name in fresh._get_params()}
    return utils.Rolling(type(metric), window_size=window, **params)


def _as_observation(item: object) -> Observation:
    if isinstance(item, Observation):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Observation(*item)
    raise TypeError(f"a stream yields (x, y) pairs or Observations, got {type(item).__name__}")


def _update(
    metric: river_metrics.base.Metric, label: object, prediction: object, proba: dict | None
):
    if getattr(metric, "requires_labels", True) or proba is None:
        if prediction is not None:
            metric.update(label, prediction)
    else:
        metric.update(label, proba)


def prequential(
    model: typing.Any,
    stream: Iterable,
    metrics: Metrics | None = None,
    delay: int | None = None,
    every: int = 1000,
    progress: bool = True,
) -> Report:
    """Test then train on each observation of `stream`; return a `Report`.

    `metrics` maps task -> River metrics (default: each task kind's). With an integer
    `delay`, an observation's labels are learned `delay` observations after it was
    predicted. Labels that arrive later as `Observation(x=None, key=k, y=...)` join the
    features predicted under key `k`, and are scored against that prediction.

    >>> from connectors.synthetic import SyntheticStream
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(8,), seed=0)
    >>> stream = SyntheticStream(tasks={"a": "regression"}, n=500, seed=0)
    >>> report = prequential(model, stream, every=250, progress=False)
    >>> sorted(report.metrics["a"]), len(report.windows), report.n_observations
    (['MAE', 'R2', 'RMSE'], 2, 500)
    """
    if delay is not None and (not isinstance(delay, int) or delay < 0):
        raise ValueError(f"delay must be a non-negative integer, got {delay!r}")
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    overall = metrics or default_metrics(model)
    windowed = {
        name: [_rolling(metric, every) for metric in task_metrics]
        for name, task_metrics in overall.items()
    }
    has_proba = hasattr(model, "predict_proba_one")
    pending: collections.deque = collections.deque()
    keyed: dict = {}
    windows: list[dict] = []
    weights: list[dict] = []
    n = 0
    started = time.perf_counter()

    def score_and_learn(x: dict, y: dict, prediction: dict, proba: dict | None) -> None:
        for name, label in y.items():
            if label is None or name not in overall:
                continue
            for metric in (*overall[name], *windowed[name]):
                _update(metric, label, prediction.get(name), (proba or {}).get(name))
        model.learn_one(x, y)

    for item in stream:
        obs = _as_observation(item)
        if obs.x is None:  # a late label for features predicted earlier under this key
            if obs.key in keyed:
                x, prediction, proba = keyed.pop(obs.key)
                score_and_learn(x, obs.y or {}, prediction, proba)
            else:
                logger.warning("late label for unknown key %r was set aside", obs.key)
            continue
        n += 1
        prediction = model.predict_one(obs.x)
        proba = model.predict_proba_one(obs.x) if has_proba else None
        if obs.key is not None and not obs.y:
            keyed[obs.key] = (obs.x, prediction, proba)
        elif delay:
            pending.append((obs.x, obs.y or {}, prediction, proba))
            if len(pending) > delay:
                score_and_learn(*pending.popleft())
        else:
            score_and_learn(obs.x, obs.y or {}, prediction, proba)
        if n % every == 0:
            windows.append(_window(n, windowed))
            if hasattr(model, "task_weights"):
                weights.append({"step": n, **model.task_weights})
            if progress:
                rate = n / (time.perf_counter() - started)
                logger.info("%d observations, %.0f/s", n, rate)
    while pending:
        score_and_learn(*pending.popleft())
    seconds = time.perf_counter() - started
    return Report(
        metrics={
            name: {type(m).__name__: float(m.get()) for m in task_metrics}
            for name, task_metrics in overall.items()
        },
        windows=windows,
        n_observations=n,
        seconds=seconds,
        throughput=n / seconds if seconds else 0.0,
        drift_events=list(getattr(model, "drift_events", [])),
        task_weights=weights,
    )


def _window(step: int, windowed: dict) -> dict:
    return {
        "step": step,
        **{
            name: {type(m.obj).__name__: float(m.get()) for m in task_metrics}
            for name, task_metrics in windowed.items()
        },
    }
