"""Prequential (test-then-train) evaluation: predict each observation, score it, then learn it.

The model and its baselines see the same stream in the same run: each observation is
predicted by all of them, and once its labels are known (at once, after a fixed delay,
or when a late label arrives by key) every prediction is scored and every one of them
learns. Metrics are kept over the whole run and over a rolling window, side by side.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
import typing
from collections.abc import Collection, Iterable, Iterator

from river import base
from river import metrics as river_metrics
from tqdm import tqdm

from stream_mtl.checkpoint import describe
from stream_mtl.evaluate.baselines import RiverLinear, SecondOrderLinear, SingleTaskModels
from stream_mtl.evaluate.regression_errors import FOLDED, RegressionErrors
from stream_mtl.evaluate.report import Report
from stream_mtl.exceptions import InvalidInput
from stream_mtl.stream import EXPIRED, StreamStep, features_frame
from stream_mtl.tasks import REGRESSION
from stream_mtl.version import __version__

logger = logging.getLogger(__name__)

Metrics = dict[str, list[river_metrics.base.Metric]]
BASELINES = ("single_task", "linear", "river_linear")
MAX_REASONS = 20  # distinct rejection reasons kept in a report


def default_metrics(model: typing.Any) -> Metrics:
    """Each task's default River metrics (see `stream_mtl.tasks`)."""
    return {name: task.default_metrics() for name, task in model.tasks.items()}


class _Score:
    """One contender's metrics per task, over the whole run and over the last `window`
    labels. River's regression errors of regression tasks are folded in a block at a
    time (`RegressionErrors`); other metrics are River's, updated label by label. The
    window's metrics are computed when read (every `every` observations, by a
    checkpoint) from each task's last `window` labels and predictions, kept (bounded).
    River's `utils.Rolling` would cost an update and a revert per label and metric,
    whether or not anything reads it."""

    def __init__(self, metrics: Metrics, window: int, regression: Collection[str] = ()) -> None:
        self.metrics = {name: [type(m) for m in task] for name, task in metrics.items()}
        self.folded = {
            name: RegressionErrors()
            for name, task in metrics.items()
            if name in regression and any(type(m) in FOLDED for m in task)
        }
        self.per_label = {
            name: [m.clone() for m in task if name not in self.folded or type(m) not in FOLDED]
            for name, task in metrics.items()
        }
        self.recent: dict[str, collections.deque] = {
            name: collections.deque(maxlen=window) for name in metrics
        }

    def update(self, y: dict, prediction: dict, proba: dict) -> None:
        for name, label in y.items():
            if name not in self.per_label:
                continue
            pair = (label, prediction.get(name), proba.get(name))
            _score(self.per_label[name], pair)
            if pair[1] is not None and name in self.folded:
                self.folded[name].add(label, pair[1])
            self.recent[name].append(pair)

    def summary(self, rolling: bool = False) -> dict[str, dict[str, float]]:
        if not rolling:
            return {
                name: self._values(name, self.per_label[name], self.folded) for name in self.metrics
            }
        per_label = {name: [m.clone() for m in task] for name, task in self.per_label.items()}
        for name, task in per_label.items():
            for pair in self.recent[name] if task else ():
                _score(task, pair)
        folded = {
            name: RegressionErrors(
                (label, prediction)
                for label, prediction, _ in self.recent[name]
                if prediction is not None
            )
            for name in self.folded
        }
        return {name: self._values(name, per_label[name], folded) for name in self.metrics}

    def _values(self, name: str, per_label: list, folded: dict) -> dict[str, float]:
        """Task `name`'s values, in the order its metrics were given."""
        by_kind = {type(m): m for m in per_label}
        return {
            kind.__name__: _value(by_kind[kind])
            if kind in by_kind
            else _finite(folded[name].value(kind))
            for kind in self.metrics[name]
        }


def _score(metrics: list, pair: tuple) -> None:
    """Update `metrics` with one (label, prediction, probabilities): each metric that
    needs labels with the prediction, each that needs probabilities with those."""
    label, prediction, proba = pair
    for metric in metrics:
        if getattr(metric, "requires_labels", True):
            if prediction is not None:
                metric.update(label, prediction)
        elif proba:
            metric.update(label, proba)


def _value(metric: river_metrics.base.Metric) -> float:
    return _finite(float(metric.get()))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")


def _describe(obj: object) -> object:
    """A River object's spec, else its own repr, else its type (and length): never an address."""
    if isinstance(obj, base.Base):
        try:
            return describe(obj)
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


class _Contenders:
    """The model and its baselines as one reader and learner for the stream step: each
    predicts every event (the baselines only the tasks labelled with it, where known) and
    learns every label, and each one's seconds are counted apart."""

    def __init__(self, model: typing.Any, baselines: typing.Sequence[str]) -> None:
        self.model = model
        self.members: dict[str, typing.Any] = {"model": model}
        if "single_task" in baselines:
            self.members["single_task"] = SingleTaskModels(model)
        if "linear" in baselines:
            self.members["linear"] = SecondOrderLinear(model)
        if "river_linear" in baselines:
            self.members["river_linear"] = RiverLinear(dict(model.tasks))
        # Only classification tasks have probabilities: a regression-only model is spared
        # the second forward pass that predict_proba_one would cost.
        self.wants_proba = any(task.kind != REGRESSION for task in model.tasks.values())
        self.seconds = dict.fromkeys(self.members, 0.0)

    def check_labels(self, y: object) -> dict:
        return self.model.check_labels(y)

    def check_one(self, x: dict) -> None:
        self.model.check_one(x)

    def check_many(self, X: typing.Any) -> None:
        self.model.check_many(X)

    def predict(self, xs: list[dict], tasks: list[list[str] | None]) -> list[dict]:
        """Every member's (prediction, probabilities) for each row of `xs`."""
        outputs: list[dict] = [{} for _ in xs]
        for name, member in self.members.items():
            started = time.perf_counter()
            if name == "model":
                served = self._model_outputs(xs)
            else:
                served = [
                    (member.predict_one(x, wanted), member.predict_proba_one(x, wanted))
                    for x, wanted in zip(xs, tasks)
                ]
            for row, pair in zip(outputs, served):
                row[name] = pair
            self.seconds[name] += time.perf_counter() - started
        return outputs

    def _model_outputs(self, xs: list[dict]) -> list[tuple[dict, dict]]:
        """The model's (prediction, probabilities) per row: for rows of one schema with
        `predict_many` (a mini-batch), else one by one."""
        model = self.model
        if len(xs) > 1 and all(x.keys() == xs[0].keys() for x in xs):
            frame = features_frame(xs)
            try:
                predictions = model.predict_many(frame).to_dict("records")
                probas = self._probas(frame) if self.wants_proba else [{} for _ in xs]
                return list(zip(predictions, probas))
            except InvalidInput:  # a column whose mix of types only makes sense row by row
                pass
        return [
            (model.predict_one(x), model.predict_proba_one(x) if self.wants_proba else {})
            for x in xs
        ]

    def _probas(self, frame: typing.Any) -> list[dict]:
        rows: list[dict] = [{} for _ in range(len(frame))]
        for task, probabilities in self.model.predict_proba_many(frame).items():
            for row, proba in zip(rows, probabilities.to_dict("records")):
                row[task] = proba
        return rows

    def learn_one(self, x: dict, y: dict) -> None:
        for name, member in self.members.items():
            started = time.perf_counter()
            member.learn_one(x, y)
            self.seconds[name] += time.perf_counter() - started

    def learn_many(self, X: typing.Any, Y: typing.Any) -> None:
        """The model learns the batch in one step; the baselines learn it row by row."""
        started = time.perf_counter()
        self.model.learn_many(X, Y)
        self.seconds["model"] += time.perf_counter() - started
        if len(self.members) == 1:
            return
        rows = list(zip(X.to_dict("records"), Y.to_dict("records")))
        for name, member in self.members.items():
            if name == "model":
                continue
            started = time.perf_counter()
            for x, y in rows:
                member.learn_one(x, {task: v for task, v in y.items() if v is not None and v == v})
            self.seconds[name] += time.perf_counter() - started


class _Scores:
    """Every member's `_Score` of the prediction served to it: the step's scorer."""

    def __init__(
        self,
        members: typing.Iterable[str],
        metrics: Metrics,
        window: int,
        regression: Collection[str],
    ) -> None:
        self.by_member = {name: _Score(metrics, window, regression) for name in members}

    def update(self, y: dict, served: dict) -> None:
        for name, score in self.by_member.items():
            score.update(y, *served[name])

    def update_many(self, rows: typing.Sequence) -> None:
        for row in rows:
            self.update(row.y, row.served)


class _Run:
    """The state of one prequential run; `iter_prequential` drives it."""

    def __init__(self, model, stream, metrics, delay, every, baselines, batch_size) -> None:
        if not isinstance(every, int) or every < 1:
            raise InvalidInput(f"every must be a positive integer, got {every!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}")
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise InvalidInput(f"unknown baselines {sorted(unknown)}; expected some of {BASELINES}")
        self.model = model
        self.every = every
        self.batch_size = batch_size
        metrics = metrics or default_metrics(model)
        self.contenders = _Contenders(model, baselines)
        regression = {name for name, task in model.tasks.items() if task.kind == REGRESSION}
        self.scores = _Scores(self.contenders.members, metrics, every, regression)
        self.step = StreamStep(
            self.contenders,
            delay=delay,
            batch=batch_size is not None,
            scorer=self.scores,
            predict=self.contenders.predict,
            max_reasons=MAX_REASONS,
        )
        self.windows: dict[str, list[dict]] = {name: [] for name in self.contenders.members}
        self.task_weights: list[dict] = []
        self.mixture: list[dict] = []
        self.n = 0
        self.started = time.perf_counter()
        self.config = {
            "library_version": __version__,
            "model": _describe(model),
            "stream": _describe(stream),
            "metrics": {name: [type(m).__name__ for m in task] for name, task in metrics.items()},
            "every": every,
            "delay": delay,
            "baselines": list(baselines),
            "batch_size": batch_size,
            "learning": (
                f"learn_many on mini-batches of {batch_size} (each batch predicted, then learned)"
                if batch_size
                else "learn_one on each observation"
            ),
        }

    def take(self, events: list, on_error: str) -> int:
        """Offer `events` (one, or a mini-batch) and learn what is ready; the new
        observations among them."""
        if self.batch_size is None:
            offers = [self.step.offer(events[0])]
        else:
            offers = self.step.offer_many(events)
        ready = []
        new = 0
        for offer in offers:
            if offer.refused is not None:
                if on_error == "raise":
                    raise offer.refused
                continue
            new += offer.prediction is not None
            ready.extend(offer.ready)
        self._learn(ready, on_error)
        self.n += new
        return new

    def _learn(self, rows: list, on_error: str) -> None:
        refused = self.step.learn(rows)
        if refused and on_error == "raise":
            raise refused[0][1]

    def checkpoint(self) -> None:
        for name, scores in self.scores.by_member.items():
            self.windows[name].append({"step": self.n, **scores.summary(rolling=True)})
        weights = getattr(self.model, "task_weights", None)
        if weights is not None:
            self.task_weights.append({"step": self.n, **weights})
        mixture = getattr(self.model, "mixture", None)
        if mixture is not None:
            self.mixture.append({"step": self.n, **mixture})

    def finish(self, on_error: str) -> None:
        self._learn(self.step.finish(), on_error)

    def _rejected_and_expired(self) -> dict[str, int]:
        rejected = dict(self.step.refused)
        for cause, n in self.step.expired().items():
            if n:
                rejected[EXPIRED.format(cause)] = n
        return rejected

    def report(self) -> Report:
        seconds = time.perf_counter() - self.started
        affinity = getattr(self.model, "task_affinity", None)
        spent = self.contenders.seconds
        return Report(
            config=self.config,
            metrics=self.scores.by_member["model"].summary(),
            windows=list(self.windows["model"]),
            baselines={
                name: {
                    "metrics": self.scores.by_member[name].summary(),
                    "windows": list(self.windows[name]),
                    "throughput": self.n / spent[name] if spent[name] else 0.0,
                }
                for name in self.contenders.members
                if name != "model"
            },
            n_observations=self.n,
            seconds=seconds,
            throughput=self.n / spent["model"] if spent["model"] else 0.0,
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
    batch_size: int | None = None,
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
    run = _Run(model, stream, metrics, delay, every, baselines, batch_size)
    for _ in _drive(run, stream, progress, on_error):
        yield run.report()


def _drive(run: _Run, stream: Iterable, progress: bool, on_error: str) -> Iterator[None]:
    """Feed `stream` to `run` (an event or a mini-batch at a time); pause at every
    checkpoint and at the end."""
    if on_error not in ("raise", "skip"):
        raise InvalidInput(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    try:
        total = len(stream)  # type: ignore[arg-type]
    except TypeError:  # an iterator, or an endless stream
        total = None
    every = run.every
    # The bar's own rate counts the baselines' time too; the model's rate alone is shown
    # beside it.
    members = run.contenders.members
    desc = "prequential, model and baselines" if len(members) > 1 else "prequential"
    with tqdm(total=total, disable=not progress, unit="obs", mininterval=1.0, desc=desc) as bar:
        for events in _chunks(stream, run.batch_size or 1):
            new = run.take(events, on_error)
            bar.update(new)
            if new and run.n // every > (run.n - new) // every:
                run.checkpoint()
                spent = run.contenders.seconds["model"]
                if progress and spent:
                    bar.set_postfix_str(f"model {run.n / spent:,.0f} obs/s")
                yield
        run.finish(on_error)
    yield


def _chunks(stream: Iterable, size: int) -> Iterator[list]:
    iterator = iter(stream)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def prequential(
    model: typing.Any,
    stream: Iterable,
    metrics: Metrics | None = None,
    delay: int | None = None,
    every: int = 1000,
    progress: bool = True,
    baselines: typing.Sequence[str] = BASELINES,
    on_error: str = "raise",
    batch_size: int | None = None,
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
    With `batch_size=N` the model (a torch model, say) is evaluated in mini-batches:
    each batch of N events is predicted, then learned with `learn_many` (the baselines
    still learn row by row); the report's config says so.

    >>> from stream_mtl.connectors.synthetic import SyntheticStream
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(8,), seed=0)
    >>> stream = SyntheticStream(tasks={"a": "regression"}, n=500, seed=0)
    >>> report = prequential(model, stream, every=250, progress=False)
    >>> sorted(report.metrics["a"]), len(report.windows), report.n_observations
    (['MAE', 'R2', 'RMSE'], 2, 500)
    >>> sorted(report.baselines)
    ['linear', 'river_linear', 'single_task']
    >>> batched = prequential(model.clone(), stream, every=250, progress=False, batch_size=50)
    >>> batched.config["learning"], batched.n_observations
    ('learn_many on mini-batches of 50 (each batch predicted, then learned)', 500)
    """
    run = _Run(model, stream, metrics, delay, every, baselines, batch_size)
    for _ in _drive(run, stream, progress, on_error):
        pass
    return run.report()
