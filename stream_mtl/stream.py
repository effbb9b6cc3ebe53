"""The stream step: what stream-mtl does with every event, whoever drives it.

An event is checked, predicted, and either learned at once or held until its labels come
(by key, or a fixed number of events later); when they come, the prediction that was
served for it is scored and the model learns. What is refused is set aside with one
wording per reason. Three drivers call it and keep only their own input and output:
`stream_mtl.evaluate.prequential` (an iterable and a report), `connectors.learning_loop`
(Kafka polls, dead letters and commits) and `stream_mtl.service.OnlineModel` (threads, a
queue and HTTP codes). River splits the same way: `river.stream.simulate_qa` joins
questions and answers, `river.evaluate.progressive_val_score` drives the model.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from stream_mtl.exceptions import InvalidInput, InvalidInputType, UnexpectedError, UnknownKey
from stream_mtl.observation import Observation
from stream_mtl.pending import PendingFeatures
from stream_mtl.rolling_error import RollingErrors

logger = logging.getLogger(__name__)

EXPIRED = "features whose labels never came (expired by {})"  # count or age
OTHER_REASONS = "other reasons"


class Labelled(typing.NamedTuple):
    """An event whose labels are known: ready to be scored and learned.

    `served` is the prediction served for `x` when it came (None if none was); `tag` is
    the driver's own handle on the event (a Kafka message), handed back as given.
    """

    x: dict
    y: dict
    served: typing.Any = None
    tag: typing.Any = None


class Offer(typing.NamedTuple):
    """What became of one event: the prediction served for it (None for labels alone),
    the rows whose labels are now known (to `learn`), or the error it was refused with."""

    prediction: typing.Any = None
    ready: Sequence[Labelled] = ()
    refused: InvalidInput | None = None


class ReasonCounts(collections.Counter):
    """Refusals counted by reason, at most `max_reasons` distinct ones (then "other reasons"),
    since the reasons name features and tasks that a stream may invent without end.

    >>> counts = ReasonCounts(max_reasons=1)
    >>> counts.add("unknown task 'a'"); counts.add("unknown task 'b'")
    >>> dict(counts)
    {"unknown task 'a'": 1, 'other reasons': 1}
    """

    def __init__(self, max_reasons: int = 20) -> None:
        super().__init__()
        self.max_reasons = max_reasons

    def add(self, reason: str, n: int = 1) -> None:
        if reason not in self and len(self) >= self.max_reasons:
            reason = OTHER_REASONS
        self[reason] += n

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add counts by reason (a checkpoint's, say), within the same bound."""
        for reason, n in counts.items():
            self.add(reason, n)


def _unexpected(error: Exception) -> UnexpectedError:
    wrapped = UnexpectedError(error)
    wrapped.__cause__ = error
    return wrapped


def as_observation(event: object) -> Observation:
    """An `Observation` from an `Observation` or an `(x, y)` pair; raises for anything else."""
    if isinstance(event, Observation):
        return event
    if isinstance(event, tuple) and len(event) == 2:
        return Observation(*event)
    raise InvalidInputType(
        f"a stream yields (x, y) pairs or Observations, got {type(event).__name__}",
        reason="an event that is neither an (x, y) pair nor an Observation",
    )


class StreamStep:
    """Check, predict, hold, join, score and learn: one event (or one batch) at a time.

    Parameters
    ----------
    model
        What learns (`learn_one`, and `learn_many` when `batch`); also what checks and
        predicts unless `reader` is given.
    reader
        What checks (`check_labels`, `check_one`, `check_many`) and predicts
        (`predict_one`, `predict_many`): a live service's read-only snapshot. Default:
        `model`.
    delay
        Learn an event's labels this many labelled events after it was predicted (a
        fixed delay); None or 0 learns at once.
    label_wait, max_pending, label_max_age, label_max_bytes
        How long features wait for labels sent later under their key: at most
        `label_wait` later arrivals, `max_pending` keys, `label_max_age` seconds (None:
        no limit by age) and `label_max_bytes` bytes held in all. Expiries are counted
        by cause.
    batch
        Learn with `learn_many` over runs of rows with one schema, instead of
        `learn_one` per row.
    window
        Labels in each task's rolling error (the default scorer).
    scorer
        Scores each served prediction with its labels (`update(y, served)`); default:
        each task's `RollingError`.
    predict
        Serves the predictions for a batch of events (of one, per event):
        `predict(xs, tasks)`, told for each the tasks labelled with it (None when not
        known yet), so that a driver that predicts with several models can spare some;
        default: `predict_rows(reader, xs)`.
    max_reasons
        Distinct refusal reasons counted in `refused`.
    contain_errors
        Refuse an event on which the model raises anything else than `InvalidInput` as an
        `UnexpectedError` (logged with its traceback) instead of raising: for a driver
        that must not stop on one event. Off by default, so that a bug surfaces.
    clock
        Seconds, for `label_max_age`.

    Examples
    --------
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,), seed=0)
    >>> step = StreamStep(model)
    >>> offer = step.offer(Observation({"size": 3.0}, key="order-1"))  # features first
    >>> offer.prediction, offer.ready
    ({'price': 0.0}, [])
    >>> offer = step.offer(Observation(None, {"price": 9.0}, key="order-1"))  # labels later
    >>> [(row.x, row.y, row.served) for row in offer.ready]
    [({'size': 3.0}, {'price': 9.0}, {'price': 0.0})]
    >>> step.learn(offer.ready)
    []
    >>> step.scorer.get(), model.n_learned
    ({'price': 9.0}, {'price': 1})
    >>> print(step.offer(Observation(None, {"price": 1.0}, key="order-1")).refused)
    no features are held under key 'order-1' (never sent, or expired)
    >>> dict(step.refused)
    {'labels for an unknown or expired key': 1}
    """

    def __init__(
        self,
        model: typing.Any,
        *,
        reader: typing.Any = None,
        delay: int | None = None,
        label_wait: int = 100_000,
        max_pending: int = 100_000,
        label_max_age: float | None = None,
        label_max_bytes: int = 100_000_000,
        batch: bool = False,
        window: int = 1000,
        scorer: typing.Any = None,
        predict: Callable[[list[dict], list[list[str] | None]], list] | None = None,
        max_reasons: int = 20,
        contain_errors: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if delay is not None and (not isinstance(delay, int) or delay < 0):
            raise InvalidInput(f"delay must be a non-negative integer, got {delay!r}")
        self.model = model
        self.reader = model if reader is None else reader
        self.delay = delay or 0
        self.batch = batch
        self.pending = PendingFeatures(
            label_wait, max_pending, label_max_age, clock, max_bytes=label_max_bytes
        )
        self.scorer = RollingErrors(model, window) if scorer is None else scorer
        self._predict = predict
        self.refused = ReasonCounts(max_reasons)
        self._refusable: tuple[type[BaseException], ...] = (
            (Exception,) if contain_errors else (InvalidInput,)
        )
        self.n_predicted = 0
        self._delayed: collections.deque[Labelled] = collections.deque()
        self._frames: dict[tuple[int, ...], pd.DataFrame] = {}  # one batch's, by row identity
        # Any thread may offer (a live service); holding and claiming must not interleave.
        self._lock = threading.Lock()

    # -- offering ------------------------------------------------------------------------

    def offer(self, event: object, tag: typing.Any = None) -> Offer:
        """Check and predict one event, then hold it or hand back what is ready to learn.

        `event` is an `Observation` or an `(x, y)` pair: features and labels (learned at
        once, or after `delay`), features and a key (held for labels sent later), or
        labels and a key with no features (joined to the features held under it).
        """
        try:
            obs = as_observation(event)
            if obs.x is None:
                return self._join(obs, tag)
            y = self.reader.check_labels(obs.y) if obs.y else {}
            self.reader.check_one(obs.x)
            served = self._serve([obs.x], [list(y) or None])[0]
            return Offer(served, self._ready(obs, y, served, tag))
        except self._refusable as error:
            return self._refuse(error)

    def offer_many(self, events: Sequence, tags: Sequence | None = None) -> list[Offer]:
        """`offer` for a batch: every event is checked and predicted (`predict_many` over
        runs of rows with one schema) before any of them is held or joined, and a bad
        event is refused alone. The outcome is that of offering the events one by one."""
        tags = [None] * len(events) if tags is None else tags
        self._frames.clear()
        observations: list[Observation | InvalidInput] = []
        for event in events:
            try:
                observations.append(as_observation(event))
            except InvalidInput as error:
                observations.append(error)
        # The common case, at batch cost: features of one schema, checked as one frame.
        features_checked = self._check_frame(
            [o.x for o in observations if isinstance(o, Observation) and o.x is not None]
        )
        checked: list[tuple[Observation, dict] | InvalidInput] = []
        for obs in observations:
            if isinstance(obs, InvalidInput) or obs.x is None:
                checked.append(obs if isinstance(obs, InvalidInput) else (obs, {}))
                continue
            try:
                y = self.reader.check_labels(obs.y) if obs.y else {}
                if not features_checked:
                    self.reader.check_one(obs.x)
                checked.append((obs, y))
            except self._refusable as error:
                checked.append(error)
        with_features = [c for c in checked if type(c) is tuple and c[0].x is not None]
        xs = [obs.x for obs, _y in with_features]
        try:
            served = iter(self._serve(xs, [list(y) or None for _obs, y in with_features]))
        except self._refusable:
            # Nothing is held or joined yet: offer the events one by one, so that the
            # error is the event's that raised it, not the batch's.
            return [self.offer(event, tag) for event, tag in zip(events, tags)]
        offers = []
        for item, tag in zip(checked, tags):
            if type(item) is not tuple:
                offers.append(self._refuse(item))
            elif item[0].x is None:
                offers.append(self._join(item[0], tag))
            else:
                prediction = next(served)
                try:  # holding refuses a key that cannot be held (unhashable)
                    ready = self._ready(item[0], item[1], prediction, tag)
                except self._refusable as error:
                    offers.append(self._refuse(error))
                else:
                    offers.append(Offer(prediction, ready))
        return offers

    def _check_frame(self, xs: list[dict]) -> bool:
        """Whether the rows `xs`, of one schema, pass as one frame (kept for predicting
        and learning them); False for rows to check one by one."""
        if len(xs) < 2:
            return False
        names = xs[0].keys()
        if not all(x.keys() == names for x in xs):
            return False
        frame = features_frame(xs)
        try:
            self.reader.check_many(frame)
        except self._refusable:  # the rows are checked one by one instead
            return False
        self._frames[_identity(xs)] = frame
        return True

    def _serve(self, xs: list[dict], tasks: list[list[str] | None]) -> list:
        if not xs:
            return []
        if self._predict is not None:
            served = self._predict(xs, tasks)
        elif len(xs) == 1:
            served = [self.reader.predict_one(xs[0])]
        else:
            served = predict_rows(self.reader, xs, self._frames)
        self.n_predicted += len(xs)
        return served

    def _ready(self, obs: Observation, y: dict, served: typing.Any, tag: typing.Any) -> list:
        if not y:
            if obs.key is not None:  # features now, labels later under this key
                with self._lock:
                    self.pending.hold(obs.key, obs.x, served)
            return []
        row = Labelled(obs.x, y, served, tag)
        if not self.delay:
            return [row]
        with self._lock:
            self._delayed.append(row)
            return [self._delayed.popleft()] if len(self._delayed) > self.delay else []

    def _join(self, obs: Observation, tag: typing.Any) -> Offer:
        """Labels sent without features: join them to the features held under their key."""
        try:
            if obs.key is None:
                raise InvalidInput(
                    "labels without features need the key their features were sent with",
                    reason="labels without features and without a key",
                )
            y = self.reader.check_labels(obs.y)  # checked before anything is claimed
            with self._lock:
                held = self.pending.claim(obs.key)
            if held is None:
                raise UnknownKey(obs.key)
        except self._refusable as error:
            return self._refuse(error)
        return Offer(None, [Labelled(held.x, y, held.served, tag)] if y else [])

    def _refuse(self, error: Exception) -> Offer:
        if not isinstance(error, InvalidInput):
            logger.error("an event made the model raise; set aside", exc_info=error)
            error = _unexpected(error)
        with self._lock:
            self.refused.add(error.reason)
        return Offer(refused=error)

    def pending_state(self) -> dict:
        """The held features' state for a checkpoint (see `PendingFeatures.state`)."""
        with self._lock:
            return self.pending.state()

    def load_pending(self, state: dict) -> None:
        """Hold again what `pending_state` gave (a resumed service)."""
        with self._lock:
            self.pending.load_state(state)

    def hold_again(self, key: Hashable, row: Labelled) -> None:
        """Hold a joined row's features under `key` again (its learning was refused, for
        example by a full queue, and the labels may be sent again)."""
        self.hold(key, row.x, row.served)

    def holds(self, key: Hashable) -> bool:
        """Whether features are held under `key` (nothing is claimed, nothing counted)."""
        with self._lock:
            try:
                return key in self.pending
            except TypeError:  # unhashable: nothing can be held under it
                return False

    def hold(self, key: Hashable, x: dict, served: typing.Any) -> None:
        """Hold features `x`, with the prediction `served` for them, under `key` (checked
        and predicted elsewhere: by a serving process, from its snapshot)."""
        with self._lock:
            self.pending.hold(key, x, served)

    # -- learning ------------------------------------------------------------------------

    def learn(self, rows: Iterable[Labelled]) -> list[tuple[Labelled, InvalidInput]]:
        """Score each row's served prediction, then learn the rows in order; the rows the
        model refuses (rare: every row was checked when offered) come back with why."""
        rows = list(rows)
        self.scorer.update_many(rows)
        refused: list[tuple[Labelled, InvalidInput]] = []
        if not self.batch:
            for row in rows:
                self._learn_one(row, refused)
            return refused
        xs = [row.x for row in rows]
        frames, self._frames = self._frames, {}  # those built to check and predict
        for start, end in _runs(xs, frames):
            run = rows[start:end]
            frame = frames.get(_identity(xs[start:end]))
            if frame is None:
                frame = features_frame(xs[start:end])
            try:
                self.model.learn_many(frame, labels_frame([row.y for row in run]))
            except self._refusable:
                # Every row passed its check, so what fails is the batch form (a column
                # that mixes numbers and text, say): the model is unchanged; go row by row.
                for row in run:
                    self._learn_one(row, refused)
        return refused

    def _learn_one(self, row: Labelled, refused: list) -> None:
        try:
            self.model.learn_one(row.x, row.y)
        except self._refusable as error:
            refusal = self._refuse(error).refused
            refused.append((row, refusal))

    def finish(self) -> list[Labelled]:
        """The rows still delayed, for a finite stream's end: learn them."""
        with self._lock:
            rows = list(self._delayed)
            self._delayed.clear()
        return rows

    # -- counts ------------------------------------------------------------------------

    def expired(self) -> dict[str, int]:
        """Held features whose labels never came, by cause: count, age and bytes (ages
        are checked now)."""
        with self._lock:
            return self.pending.expired()


def predict_rows(
    model: typing.Any, xs: list[dict], frames: dict[tuple[int, ...], pd.DataFrame] | None = None
) -> list[dict]:
    """`model`'s predictions for the rows `xs`: one `predict_many` per run of rows with the
    same feature names, row by row where a run's mix of types only makes sense so.

    `frames` holds the runs' frames by the rows' identity: those found are used, those
    built are added (for learning the same rows next)."""
    frames = {} if frames is None else frames
    predictions: list[dict] = []
    for start, end in _runs(xs, frames):
        key = _identity(xs[start:end])
        if key not in frames:
            frames[key] = features_frame(xs[start:end])
        try:
            predicted = model.predict_many(frames[key])
        except InvalidInput:
            predictions.extend(model.predict_one(x) for x in xs[start:end])
        else:
            predictions.extend(predicted.to_dict("records"))
    return predictions


def _identity(xs: list[dict]) -> tuple[int, ...]:
    """The rows themselves (not their values): a frame built from them is theirs."""
    return tuple(map(id, xs))


def _runs(
    xs: list[dict], frames: dict[tuple[int, ...], pd.DataFrame] | None = None
) -> Iterable[tuple[int, int]]:
    """(start, end) of each run of consecutive rows with the same feature names; one run
    for rows that `frames` holds as one frame already."""
    if frames and _identity(xs) in frames:
        yield 0, len(xs)
        return
    start = 0
    while start < len(xs):
        names = xs[start].keys()
        end = start + 1
        while end < len(xs) and xs[end].keys() == names:
            end += 1
        yield start, end
        start = end


_NUMBERS = {float, int}


def features_frame(xs: list[dict]) -> pd.DataFrame:
    """The rows `xs` as a DataFrame; built from one array when they are all numbers
    (not bools, which are indicators) under the same names, the common case.

    >>> features_frame([{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}]).to_numpy().tolist()
    [[1.0, 2.5], [3.0, 4.0]]
    """
    names = xs[0].keys()
    types: set[type] = set()
    for x in xs:
        if x.keys() != names:
            return pd.DataFrame.from_records(xs)
        types.update(map(type, x.values()))
    if types <= _NUMBERS:
        values = np.array([list(x.values()) for x in xs], dtype=float)
        return pd.DataFrame(values, columns=list(names))
    return pd.DataFrame.from_records(xs)


def labels_frame(ys: list[dict]) -> pd.DataFrame:
    """The label dicts `ys` as a DataFrame with one column per task named, missing (None,
    which the learner skips) where a row has no label for it."""
    tasks = dict.fromkeys(name for y in ys for name in y)
    return pd.DataFrame({name: [y.get(name) for y in ys] for name in tasks})
