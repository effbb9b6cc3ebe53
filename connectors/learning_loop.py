"""LearningLoop: consume a Kafka topic, predict, learn, checkpoint, then commit.

The loop is what `stream-mtl run` runs. For each poll of its `KafkaSource` it

1. checks every message against the model (`check_one`) and sets a bad one aside in the
   dead-letter topic with the model's reason, so that one bad record never stops or
   spoils a batch;
2. predicts every message that has features, before learning anything from the poll,
   and sends the prediction with the message's key to the `KafkaSink` (if any);
3. holds features that came without labels, by key, for a bounded wait
   (`PendingFeatures`), and joins labels-only messages to them;
4. learns: one `learn_many` step per run of rows with the same features when
   `batch_learning` is on (the default on the torch backend), else `learn_one` per row.

Every `checkpoint_every` messages, when the topic goes idle, on a partition revocation
and on `stop()`, it writes a checkpoint holding the model, the source's position and the
held features, and only then commits that position to Kafka. A restart from the
checkpoint (`LearningLoop.resume_or_start`) seeks to the same position, so a crash at
any point neither loses nor double-learns a message. Predictions and dead letters sent
after the last checkpoint are sent again after such a crash (at least once).
"""

from __future__ import annotations

import collections
import logging
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from stream_mtl import MultiTaskLearner
from stream_mtl.connectors.kafka import KafkaSink, KafkaSource, Message
from stream_mtl.evaluate.rolling_error import RollingError
from stream_mtl.pending import PendingFeatures

logger = logging.getLogger(__name__)


class LearningLoop:
    """Learn a model from a Kafka topic, exactly once per message, across restarts.

    Parameters
    ----------
    model
        The learner; `resume_or_start` builds it from a checkpoint when there is one.
    source
        Where the messages come from.
    checkpoint
        The checkpoint file (written atomically).
    checkpoint_every
        Messages consumed between checkpoints; a checkpoint is also written when the
        topic goes idle and when the loop stops.
    sink
        Where predictions go, key preserved; None for none.
    batch_learning
        `learn_many` per poll (default: on the torch backend) or `learn_one` per message.
    label_wait, max_pending
        How long features wait for their labels (in later features messages), and how
        many are held at most.
    log_every
        Seconds between log lines on throughput and per-task rolling error.
    window
        Labels in each task's rolling error.
    on_learned
        Called with the messages of each learning step (tests count them).

    Examples
    --------
    Without a broker, the parameters are checked at once:

    >>> LearningLoop(None, None, "model.ckpt", checkpoint_every=0)
    Traceback (most recent call last):
    ...
    ValueError: checkpoint_every must be a positive integer, got 0
    """

    def __init__(
        self,
        model: MultiTaskLearner,
        source: KafkaSource,
        checkpoint: str | os.PathLike,
        checkpoint_every: int = 10_000,
        sink: KafkaSink | None = None,
        batch_learning: bool | None = None,
        label_wait: int = 100_000,
        max_pending: int = 100_000,
        log_every: float = 10.0,
        window: int = 1000,
        on_learned: Callable[[list[Message]], None] | None = None,
    ) -> None:
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
        self.model = model
        self.source = source
        self.checkpoint_path = Path(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.resumed = False  # True when resume_or_start went on from a checkpoint
        self.sink = sink
        if batch_learning is None:
            batch_learning = model.backend == "torch"
        self.batch_learning = batch_learning
        self.pending = PendingFeatures(label_wait, max_pending)
        self.log_every = log_every
        self.on_learned = on_learned
        self.learned: collections.Counter = collections.Counter()  # by partition
        self.n_checkpoints = 0
        self._consumed_at_checkpoint = 0
        self._checkpointed: dict | None = None
        self._in_batch = False
        self._last_log = (time.monotonic(), 0)
        self.window = window
        self.errors: dict[str, RollingError] = {}  # by task, from its first scored label
        source.on_revoke = self._on_revoke

    @classmethod
    def resume_or_start(
        cls,
        checkpoint: str | os.PathLike,
        new_model: Callable[[], MultiTaskLearner],
        source: KafkaSource,
        backend: str | None = None,
        device: str | None = None,
        **options: typing.Any,
    ) -> LearningLoop:
        """A loop that goes on from `checkpoint` if it exists, else starts `new_model()`.

        A resumed model is loaded into `backend` on `device` (default: those it was saved
        from), and the loop's `resumed` is True.
        """
        path = Path(checkpoint)
        if not path.exists():
            return cls(new_model(), source, path, **options)
        model, extra = MultiTaskLearner.load_with_extra(path, backend=backend, device=device)
        loop = cls(model, source, path, **options)
        loop._restore(extra)
        loop.resumed = True
        logger.info("resumed from %s at %s", path, extra.get("position"))
        return loop

    def _restore(self, extra: dict) -> None:
        if extra.get("topic") != self.source.topic:
            raise ValueError(
                f"checkpoint {str(self.checkpoint_path)!r} was written for topic "
                f"{extra.get('topic')!r}, not {self.source.topic!r}"
            )
        self.source.seek(extra["position"])
        self.pending.load_state(extra["pending"])
        self.learned.update({int(p): n for p, n in extra["learned"].items()})
        self._checkpointed = extra["position"]

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until the source ends or `stop()`; then checkpoint, commit and close."""
        try:
            for batch in self.source.batches():
                if batch:
                    self._in_batch = True
                    self._process(batch)
                    self._in_batch = False
                consumed = self.source.n_consumed - self._consumed_at_checkpoint
                if consumed >= self.checkpoint_every or not batch:
                    self.checkpoint()
                self._log()
        finally:
            if self._in_batch:
                logger.warning(
                    "stopped inside a batch: no checkpoint, so a restart goes on from the "
                    "last one and learns every message after it once"
                )
            else:
                self.checkpoint()
            self.source.close()
            if self.sink is not None:
                self.sink.close()

    def stop(self) -> None:
        """Stop after the current poll (safe to call from a signal handler)."""
        self.source.stop()

    def _on_revoke(self, _revoked: set) -> None:
        # Called on kafka-python's IO thread during a rebalance, while `run` waits in a
        # poll: the commit is sent, not awaited (nothing may block that thread).
        if self._in_batch:  # never checkpoint a position whose messages are not learned
            logger.warning("partitions revoked while a batch is learned: not checkpointing")
            return
        self.checkpoint(wait=False)

    def checkpoint(self, wait: bool = True) -> None:
        """Write the model and position, then commit the position; no-op if nothing moved.

        `wait=False` sends the commit without waiting for the broker (in a rebalance).
        """
        position = self.source.position
        if position == self._checkpointed:
            return
        if self.sink is not None:
            self.sink.flush()
        self.source.flush()
        extra = {
            "topic": self.source.topic,
            "group": self.source.group_id,
            "position": position,
            "pending": self.pending.state(),
            "learned": {str(p): n for p, n in sorted(self.learned.items())},
            "rejected": dict(self.source.rejected),
        }
        self.model.save(self.checkpoint_path, extra=extra)
        self.source.commit(position, wait=wait)
        self._checkpointed = position
        self._consumed_at_checkpoint = self.source.n_consumed
        self.n_checkpoints += 1
        logger.debug("checkpoint %d at %s", self.n_checkpoints, position)

    # -- one poll ------------------------------------------------------------------------

    def _process(self, batch: list[Message]) -> None:
        if self.batch_learning and self._process_as_one_batch(batch):
            return
        checked = self._checked(batch)
        with_features = [m for m in checked if m.observation.x is not None]
        predictions = dict(zip((id(m) for m in with_features), self._predict(with_features)))
        rows: list[tuple[dict, dict, dict | None, Message]] = []
        for message in checked:
            obs = message.observation
            prediction = predictions.get(id(message))
            if prediction is not None and self.sink is not None:
                self.sink.send(message.key, _prediction_record(message, prediction))
            if obs.x is not None and obs.y:
                rows.append((obs.x, obs.y, prediction, message))
            elif obs.x is not None:
                if obs.key is not None:
                    self.pending.hold(obs.key, obs.x, prediction)
            else:
                held = self.pending.claim(obs.key)
                if held is None:
                    self._set_aside(message, "labels for an unknown or expired key")
                else:
                    rows.append((held.x, obs.y, held.extra, message))
        if rows:
            self._score(rows)
            self._learn(rows)

    def _process_as_one_batch(self, batch: list[Message]) -> bool:
        """The common case in batch mode, at batch cost: every message has features and
        labels, and the model accepts the poll as one batch. Otherwise False, and nothing
        has changed."""
        observations = [m.observation for m in batch]
        if not all(obs.x is not None and obs.y for obs in observations):
            return False
        X = features_frame([obs.x for obs in observations])
        Y = labels_frame([obs.y for obs in observations])
        try:
            self.model.check_many(None, Y)
            predicted = self.model.predict_many(X)  # checks the features
        except (ValueError, TypeError):
            return False
        if self.sink is not None:
            for message, prediction in zip(batch, predicted.to_dict("records")):
                self.sink.send(message.key, _prediction_record(message, prediction))
        for name in Y.columns:
            self._error(name).update_many(Y[name].to_numpy(), predicted[name].to_numpy())
        self._learn_frames(X, Y, [(obs.x, obs.y) for obs in observations])
        self._learned(batch)
        return True

    def _checked(self, batch: list[Message]) -> list[Message]:
        """The messages the model accepts; the others are set aside with its reason."""
        return [message for message in batch if self._check(message)]

    def _check(self, message: Message) -> bool:
        obs = message.observation
        try:
            self.model.check_one(obs.x, obs.y)
        except (ValueError, TypeError) as error:
            self._set_aside(message, str(error))
            return False
        return True

    def _set_aside(self, message: Message, reason: str) -> None:
        self.source.set_aside(reason, message.partition, message.offset, message.key, message.value)

    def _predict(self, messages: list[Message]) -> list[dict]:
        if not messages:
            return []
        if not self.batch_learning:
            return [self.model.predict_one(m.observation.x) for m in messages]
        frame = features_frame([m.observation.x for m in messages])
        try:
            return self.model.predict_many(frame).to_dict("records")
        except (ValueError, TypeError):  # rows that only make sense one by one
            return [self.model.predict_one(m.observation.x) for m in messages]

    def _score(self, rows: list) -> None:
        for _x, y, prediction, _message in rows:
            if prediction is not None:
                for name, label in y.items():
                    self._error(name).update(label, prediction.get(name))

    def _error(self, task: str) -> RollingError:
        if task not in self.errors:
            self.errors[task] = RollingError(self.model.tasks[task].kind, self.window)
        return self.errors[task]

    def _learn(self, rows: list) -> None:
        if not self.batch_learning:
            for x, y, _prediction, message in rows:
                self.model.learn_one(x, y)
                self._learned([message])
            return
        start = 0
        while start < len(rows):  # runs of rows with the same features, in order
            names = rows[start][0].keys()
            end = start + 1
            while end < len(rows) and rows[end][0].keys() == names:
                end += 1
            self._learn_run(rows[start:end])
            start = end

    def _learn_run(self, rows: list) -> None:
        X = features_frame([row[0] for row in rows])
        Y = labels_frame([row[1] for row in rows])
        self._learn_frames(X, Y, [(row[0], row[1]) for row in rows])
        self._learned([row[3] for row in rows])

    def _learn_frames(self, X: pd.DataFrame, Y: pd.DataFrame, rows: list) -> None:
        try:
            self.model.learn_many(X, Y)
        except (ValueError, TypeError):
            # Each row passed check_one, so what fails is the batch form (a column that
            # mixes numbers and text, say): the model is unchanged; learn the rows one by one.
            for x, y in rows:
                self.model.learn_one(x, y)

    def _learned(self, messages: list[Message]) -> None:
        self.learned.update(message.partition for message in messages)
        if self.on_learned is not None:
            self.on_learned(messages)

    # -- reporting -----------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts and per-task rolling error so far."""
        return {
            "consumed": self.source.n_consumed,
            "learned": sum(self.learned.values()),
            "set_aside": sum(self.source.rejected.values()),
            "waiting_for_labels": len(self.pending),
            "expired": self.pending.n_expired,
            "checkpoints": self.n_checkpoints,
            "rolling": {name: error.get() for name, error in self.errors.items()},
        }

    def _log(self) -> None:
        now, consumed = time.monotonic(), self.source.n_consumed
        then, consumed_then = self._last_log
        if now - then < self.log_every:
            return
        self._last_log = (now, consumed)
        stats = self.stats()
        errors = ", ".join(
            f"{name} {error.name} {error.get():.4g}" for name, error in self.errors.items()
        )
        errors = errors or "no labels yet"
        logger.info(
            "%s consumed (%.0f msg/s), %s learned, %s set aside, %s waiting for labels; "
            "rolling: %s",
            f"{consumed:,}",
            (consumed - consumed_then) / (now - then),
            f"{stats['learned']:,}",
            f"{stats['set_aside']:,}",
            f"{stats['waiting_for_labels']:,}",
            errors,
        )


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
    """The label dicts `ys` as a DataFrame with one column per task named, missing
    (None or NaN, which the learner skips) where a row has no label for it."""
    tasks = dict.fromkeys(name for y in ys for name in y)
    return pd.DataFrame({name: [y.get(name) for y in ys] for name in tasks})


def _prediction_record(message: Message, prediction: dict) -> dict:
    obs = message.observation
    record = {"key": obs.key, "prediction": prediction}
    if obs.time is not None:
        record["time"] = obs.time
    record["partition"], record["offset"] = message.partition, message.offset
    return record
