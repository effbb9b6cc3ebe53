"""Prequential (test-then-train) evaluation: predict each observation, score it, then learn it.

The model and its baselines see the same stream in the same run: each observation is
predicted by all of them, and once its labels are known (at once, after a fixed delay,
or when a late label arrives by key) every prediction is scored and every one of them
learns. Metrics are kept over the whole run and over a rolling window, side by side.
"""

from __future__ import annotations

import collections
import logging
import math
import time
import typing
from collections.abc import Iterable, Iterator

from river import base, utils
from river import metrics as river_metrics
from tqdm import tqdm

from stream_mtl import __version__
from stream_mtl.checkpoint import object_to_spec
from stream_mtl.evaluate.baselines import RiverLinear, SecondOrderLinear, SingleTaskModels
from stream_mtl.evaluate.report import Report
from stream_mtl.exceptions import InvalidInput, InvalidInputType
from stream_mtl.observation import Observation
from stream_mtl.pending import PendingFeatures
from stream_mtl.tasks import REGRESSION

logger = logging.getLogger(__name__)

Metrics = dict[str, list[river_metrics.base.Metric]]
BASELINES = ("single_task", "linear", "river_linear")
MAX_REASONS = 20  # distinct rejection reasons kept in a report
EXPIRED = "features whose labels never came (held too long)"


def default_metrics(model: typing.Any) -> Metrics:
    """Each task's default River metrics (see `stream_mtl.tasks`)."""
    return {name: task.default_metrics() for name, task in model.tasks.items()}


def _rolling(metric: river_metrics.base.Metric, window: int) -> utils.Rolling:
    """A fresh copy of `metric` computed over the last `window` labels only."""
    fresh = metric.clone()
    params = {name: getattr(fresh, name) for name in fresh._get_params()}
    return utils.Rolling(type(metric), window_size=window, **params)


class _Scores:
    """One contender's metrics per task, over the whole run and over a rolling window."""

    def __init__(self, metrics: Metrics, window: int) -> None:
        self.overall = {name: [m.clone() for m in task] for name, task in metrics.items()}
        self.rolling = {name: [_rolling(m, window) for m in task] for name, task in metrics.items()}

    def update(self, y: dict, prediction: dict, proba: dict) -> None:
        for name, label in y.items():
            if name not in self.overall:
                continue
            for metric in (*self.overall[name], *self.rolling[name]):
                if getattr(metric, "requires_labels", True):
                    if prediction.get(name) is not None:
                        metric.update(label, prediction[name])
                elif proba.get(name):
                    metric.update(label, proba[name])

    def summary(self, rolling: bool = False) -> dict[str, dict[str, float]]:
        scores = self.rolling if rolling else self.overall
        return {name: {_metric_name(m): _value(m) for m in task} for name, task in scores.items()}


def _metric_name(metric: river_metrics.base.Metric) -> str:
    return type(metric.obj if isinstance(metric, utils.Rolling) else metric).__name__


def _value(metric: river_metrics.base.Metric) -> float:
    value = float(metric.get())
    return value if math.isfinite(value) else float("nan")


def _as_observation(item: object) -> Observation:
    if isinstance(item, Observation):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Observation(*item)
    raise InvalidInputType(
        f"a stream yields (x, y) pairs or Observations, got {type(item).__name__}"
    )


def _describe(obj: object) -> object:
    """A River object's spec, else its own repr, else its type (and length): never an address."""
    if isinstance(obj, base.Base):
        try:
            return object_to_spec(obj)
        except TypeError:
            pass
    kind = type(obj)
    if kind.__repr__ is not object.__repr__ and not isinstance(obj, list | tuple):
        return repr(obj)
    name = f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")
    try:
        return f"{name} of {len(obj):,} items"  # type: ignore[arg-type]
    except TypeError:
        return name


class _Run:
    """The state of one prequential run; `iter_prequential` drives it."""

    def __init__(self, model, stream, metrics, delay, every, baselines) -> None:
        if delay is not None and (not isinstance(delay, int) or delay < 0):
            raise InvalidInput(f"delay must be a non-negative integer, got {delay!r}")
        if not isinstance(every, int) or every < 1:
            raise InvalidInput(f"every must be a positive integer, got {every!r}")
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise InvalidInput(f"unknown baselines {sorted(unknown)}; expected some of {BASELINES}")
        self.model = model
        self.tasks = dict(model.tasks)
        # Only classification tasks have probabilities: a regression-only model is spared
        # the second forward pass that predict_proba_one would cost.
        self.wants_proba = any(task.kind != REGRESSION for task in self.tasks.values())
        self.every = every
        self.delay = delay
        metrics = metrics or default_metrics(model)
        self.contenders: dict[str, typing.Any] = {"model": model}
        if "single_task" in baselines:
            self.contenders["single_task"] = SingleTaskModels(model)
        if "linear" in baselines:
            self.contenders["linear"] = SecondOrderLinear(model)
        if "river_linear" in baselines:
            self.contenders["river_linear"] = RiverLinear(self.tasks)
        self.scores = {name: _Scores(metrics, every) for name in self.contenders}
        self.pending: collections.deque = collections.deque()
        self.keyed = PendingFeatures()
        self.rejected: collections.Counter = collections.Counter()
        self.windows: dict[str, list[dict]] = {name: [] for name in self.contenders}
        self.task_weights: list[dict] = []
        self.mixture: list[dict] = []
        self.n = 0
        self.seconds = {name: 0.0 for name in self.contenders}
        self.started = time.perf_counter()
        self.config = {
            "library_version": __version__,
            "model": _describe(model),
            "stream": _describe(stream),
            "metrics": {name: [type(m).__name__ for m in task] for name, task in metrics.items()},
            "every": every,
            "delay": delay,
            "baselines": list(baselines),
        }

    def reject(self, reason: str) -> None:
        if reason in self.rejected or len(self.rejected) < MAX_REASONS:
            self.rejected[reason] += 1
        else:
            self.rejected["other reasons"] += 1
        logger.debug("observation set aside: %s", reason)

    def labels(self, y: dict | None) -> dict:
        """Canonical labels of known tasks (absent ones dropped); raises naming the fault."""
        labels = {}
        for name, label in (y or {}).items():
            if name not in self.tasks:
                raise InvalidInput(f"unknown task {name!r}")
            label = self.tasks[name].check_label(name, label)
            if label is not None:
                labels[name] = label
        return labels

    def predict(self, x: dict, wanted: list[str] | None) -> dict:
        """Every contender's (prediction, probabilities) for `x`; baselines only for `wanted`."""
        outputs = {}
        for name, contender in self.contenders.items():
            started = time.perf_counter()
            if name == "model":
                proba = contender.predict_proba_one(x) if self.wants_proba else {}
                outputs[name] = (contender.predict_one(x), proba)
            else:
                outputs[name] = (
                    contender.predict_one(x, wanted),
                    contender.predict_proba_one(x, wanted),
                )
            self.seconds[name] += time.perf_counter() - started
        return outputs

    def score_and_learn(self, x: dict, y: dict, outputs: dict) -> None:
        if not y:
            return
        for name, contender in self.contenders.items():
            self.scores[name].update(y, *outputs[name])
            started = time.perf_counter()
            contender.learn_one(x, y)
            self.seconds[name] += time.perf_counter() - started

    def step(self, item: object) -> bool:
        """Take one item of the stream; whether it was a new observation."""
        obs = _as_observation(item)
        if obs.x is None:  # a late label for features predicted earlier under this key
            y = self.labels(obs.y)  # checked before the held features are claimed
            held = self.keyed.claim(obs.key)
            if held is None:
                self.reject("late label for an unknown or expired key")
                return False
            self.score_and_learn(held.x, y, held.extra)
            return False
        y = self.labels(obs.y)
        features_only = obs.key is not None and not obs.y
        outputs = self.predict(obs.x, None if features_only else list(y))
        self.n += 1
        if features_only:
            self.keyed.hold(obs.key, obs.x, outputs)
        elif self.delay:
            self.pending.append((obs.x, y, outputs))
            if len(self.pending) > self.delay:
                self.score_and_learn(*self.pending.popleft())
        else:
            self.score_and_learn(obs.x, y, outputs)
        return True

    def checkpoint(self) -> None:
        for name, scores in self.scores.items():
            self.windows[name].append({"step": self.n, **scores.summary(rolling=True)})
        weights = getattr(self.model, "task_weights", None)
        if weights is not None:
            self.task_weights.append({"step": self.n, **weights})
        mixture = getattr(self.model, "mixture", None)
        if mixture is not None:
            self.mixture.append({"step": self.n, **mixture})

    def finish(self) -> None:
        while self.pending:
            self.score_and_learn(*self.pending.popleft())

    def _rejected_and_expired(self) -> dict[str, int]:
        rejected = dict(self.rejected)
        if self.keyed.n_expired:
            rejected[EXPIRED] = self.keyed.n_expired
        return rejected

    def report(self) -> Report:
        seconds = time.perf_counter() - self.started
        affinity = getattr(self.model, "task_affinity", None)
        model_seconds = self.seconds["model"]
        return Report(
            config=self.config,
            metrics=self.scores["model"].summary(),
            windows=list(self.windows["model"]),
            baselines={
                name: {
                    "metrics": self.scores[name].summary(),
                    "windows": list(self.windows[name]),
                    "throughput": self.n / self.seconds[name] if self.seconds[name] else 0.0,
                }
                for name in self.contenders
                if name != "model"
            },
            n_observations=self.n,
            seconds=seconds,
            throughput=self.n / model_seconds if model_seconds else 0.0,
            memory_bytes=int(getattr(self.model, "_raw_memory_usage", 0)),
            drift_events=list(getattr(self.model, "drift_events", [])),
            task_weights=list(self.task_weights),
            task_affinity=(
                {"tasks": list(affinity.index), "matrix": affinity.to_numpy().tolist()}
                if affinity is not None
                else None
            ),
            rejected=self._rejected_and_expired(),
            mixture=list(self.mixture),
        )


def iter_prequential(
    model: typing.Any,
    stream: Iterable,
    metrics: Metrics | None = None,
    delay: int | None = None,
    every: int = 1000,
    progress: bool = True,
    baselines: typing.Sequence[str] = BASELINES,
    on_error: str = "raise",
) -> Iterator[Report]:
    """`prequential` as it goes: a `Report` of the run so far every `every` observations,
    and a last one when the stream ends (after any delayed labels are learned).

    >>> from stream_mtl.connectors.synthetic import SyntheticStream
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(8,), seed=0)
    >>> stream = SyntheticStream(tasks={"a": "regression"}, n=500, seed=0)
    >>> [r.n_observations for r in iter_prequential(model, stream, every=200, progress=False)]
    [200, 400, 500]
    """
    run = _Run(model, stream, metrics, delay, every, baselines)
    for _ in _drive(run, stream, progress, on_error):
        yield run.report()


def _drive(run: _Run, stream: Iterable, progress: bool, on_error: str) -> Iterator[None]:
    """Feed `stream` to `run`; pause at every checkpoint and at the end."""
    if on_error not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    try:
        total = len(stream)  # type: ignore[arg-type]
    except TypeError:  # an iterator, or an endless stream
        total = None
    every = run.every
    # The bar's own rate counts the baselines' time too; the model's rate alone is shown
    # beside it.
    desc = "prequential, model and baselines" if len(run.contenders) > 1 else "prequential"
    with tqdm(total=total, disable=not progress, unit="obs", mininterval=1.0, desc=desc) as bar:
        for item in stream:
            try:
                new = run.step(item)
            except (ValueError, TypeError) as error:
                if on_error == "raise":
                    raise
                run.reject(getattr(error, "reason", str(error)))
                continue
            if new and run.n % every == 0:
                run.checkpoint()
                bar.update(every)
                if progress and run.seconds["model"]:
                    bar.set_postfix_str(f"model {run.n / run.seconds['model']:,.0f} obs/s")
                yield
        run.finish()
        bar.update(run.n % every)
    yield


def prequential(
    model: typing.Any,
    stream: Iterable,
    metrics: Metrics | None = None,
    delay: int | None = None,
    every: int = 1000,
    progress: bool = True,
    baselines: typing.Sequence[str] = BASELINES,
    on_error: str = "raise",
) -> Report:
    """Test then train on each observation of `stream`; return a `Report`.

    `metrics` maps task -> River metrics (default: each task kind's; see
    `stream_mtl.tasks`), each kept over the whole run and over the last `every` labels.
    With an integer `delay`, an observation's labels are scored and learned `delay`
    observations after it was predicted. An `Observation` with a `key` and no labels
    is predicted and kept; a later `Observation(x=None, key=k, y=...)` scores those
    predictions and is learned.

    `baselines` run beside the model, on the same stream in the same call:
    `"single_task"` (one model of the same size per task), `"linear"` (the model's
    second-order linear heads alone, one per task) and `"river_linear"` (River's
    linear model per task); pass `()` for none. With `on_error="skip"`, an
    observation that is rejected (a NaN feature, a label of the wrong type, an
    unknown task) is counted in `Report.rejected` by reason instead of stopping the run.

    >>> from stream_mtl.connectors.synthetic import SyntheticStream
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(8,), seed=0)
    >>> stream = SyntheticStream(tasks={"a": "regression"}, n=500, seed=0)
    >>> report = prequential(model, stream, every=250, progress=False)
    >>> sorted(report.metrics["a"]), len(report.windows), report.n_observations
    (['MAE', 'R2', 'RMSE'], 2, 500)
    >>> sorted(report.baselines)
    ['linear', 'river_linear', 'single_task']
    """
    run = _Run(model, stream, metrics, delay, every, baselines)
    for _ in _drive(run, stream, progress, on_error):
        pass
    return run.report()
