"""OnlineModel: a learner embedded in a live service - predicting from any thread while it learns.

Predictions come from a read-only `Snapshot` of the model: a private copy that is never
changed once published and is swapped in (one reference assignment) after every
`snapshot_every` updates or `snapshot_ms` milliseconds, whichever comes first. A
prediction therefore never waits for a learning step and never sees half of one.
Learning happens on one background thread, fed by a bounded queue; when the queue is
full, `learn` blocks for at most `block_timeout` seconds and then raises `QueueFull` (or
raises at once with `block_timeout=0`, as the HTTP service does: its event loop must
never block). Every input is checked when it is offered, so a
bad one raises in the caller's thread, naming the fault, and is never queued.

Features predicted under a key are held, with the prediction served for them (bounded
in count and age), until `learn_label(key, y)` brings their labels; the rolling error
scores the prediction that was served. What happens to each event is the stream step's
(`stream_mtl.stream`): this module keeps the threads and the queue. With a `checkpoint`
path, the learner thread writes an atomic checkpoint every `checkpoint_seconds` seconds
and on `close()`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import typing
from collections.abc import Callable, Hashable
from pathlib import Path

from stream_mtl.exceptions import InvalidInput, UnknownKey
from stream_mtl.learner import MultiTaskLearner
from stream_mtl.observation import Observation
from stream_mtl.predictor import Snapshot
from stream_mtl.rolling_error import RollingError
from stream_mtl.stream import Labelled, Offer, StreamStep

__all__ = ["OnlineModel", "QueueFull", "UnknownKey"]  # UnknownKey: raised by learn_label

logger = logging.getLogger(__name__)

_STOP = object()


class QueueFull(RuntimeError):
    """The learn queue stayed full for the whole wait: the observation was not queued."""


class OnlineModel:
    """A `MultiTaskLearner` shared between threads: snapshot predictions, queued learning.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> service = OnlineModel(MultiTaskLearner(tasks={"price": Regression()}, hidden=(8,)))
    >>> for i in range(300):
    ...     service.learn({"size": i % 10}, {"price": 2.0 * (i % 10)})
    >>> service.predict({"size": 4}, key="order-1") is not None
    True
    >>> service.learn_label("order-1", {"price": 8.0})
    >>> service.close()
    >>> service.model.n_learned
    {'price': 301}
    """

    def __init__(
        self,
        model: MultiTaskLearner,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_seconds: float | None = None,
        snapshot_every: int = 100,
        snapshot_ms: float = 50.0,
        queue_size: int = 10_000,
        block_timeout: float = 1.0,
        label_wait: int = 100_000,
        label_max_age: float | None = 3600.0,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        window: int = 1000,
    ) -> None:
        if checkpoint_seconds is not None and checkpoint is None:
            raise InvalidInput("checkpoint_seconds needs a checkpoint path")
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise InvalidInput(f"snapshot_every must be a positive integer, got {snapshot_every!r}")
        self.model = model
        self.checkpoint_path = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_seconds = checkpoint_seconds
        self.snapshot_every = snapshot_every
        self.snapshot_ms = snapshot_ms
        self.block_timeout = block_timeout
        self.label_max_age = label_max_age
        self.on_snapshot = on_snapshot
        self.n_queued = 0
        self.n_refused = 0
        self.n_snapshots = 0
        self.learn_errors = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._snapshot = self._copy()
        self._step = StreamStep(
            model,
            reader=self._snapshot,
            label_wait=label_wait,
            max_pending=label_wait,
            label_max_age=label_max_age,
            window=window,
        )
        self._thread = threading.Thread(target=self._learn_loop, name="stream-mtl-learner")
        self._thread.daemon = True
        self._thread.start()

    # -- predicting (any thread) -----------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The read-only copy of the model that predictions come from now; never changed
        once published."""
        return self._snapshot

    def predict(self, x: dict, key: Hashable | None = None) -> dict:
        """Predictions for `x` from the current snapshot; with a `key`, `x` and the
        prediction are held for `learn_label(key, y)`."""
        return _accepted(self._step.offer(Observation(x, key=key))).prediction

    def predict_proba(self, x: dict) -> dict:
        return self._snapshot.predict_proba_one(x)

    def predict_many(self, X: typing.Any) -> typing.Any:
        """`predict_many` of the current snapshot: a DataFrame with a column per task."""
        return self._snapshot.predict_many(X)

    # -- learning (any thread offers, one thread learns) -----------------------------------

    def learn(self, x: dict, y: dict) -> None:
        """Queue `(x, y)` for learning; raises at once if the model would refuse it.

        Its rolling error scores the snapshot's prediction for `x` at the time of the call.
        """
        self._enqueue(_accepted(self._step.offer(Observation(x, y))).ready)

    def learn_label(self, key: Hashable, y: dict) -> None:
        """Learn `y` with the features held under `key` by `predict(x, key=key)`; raises
        `UnknownKey` if none are held. Refused for a full queue, the features stay held,
        so that the labels may be sent again."""
        ready = _accepted(self._step.offer(Observation(None, y, key=key))).ready
        try:
            self._enqueue(ready)
        except QueueFull:
            for row in ready:
                self._step.hold_again(key, row)
            raise

    def _enqueue(self, rows: list[Labelled]) -> None:
        if self._closed:
            raise RuntimeError("this OnlineModel is closed")
        for row in rows:
            try:
                self._queue.put(row, block=self.block_timeout > 0, timeout=self.block_timeout)
            except queue.Full:
                self.n_refused += 1
                raise QueueFull(
                    f"the learn queue is full ({self._queue.maxsize} observations waiting); "
                    "learning is slower than the labels come"
                ) from None
            self.n_queued += 1

    @property
    def errors(self) -> dict[str, RollingError]:
        """Each task's rolling error: the predictions served, scored by their labels."""
        return self._step.scorer.errors

    def expired(self) -> dict[str, int]:
        """Features held under a key whose labels never came, by cause: count and age."""
        return self._step.expired()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _learn_loop(self) -> None:
        since_snapshot, snapshot_at = 0, time.monotonic()
        checkpoint_at = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=self.snapshot_ms / 1000)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                for _row, error in self._step.learn([item]):  # checked when offered; rare
                    self.learn_errors += 1
                    logger.warning("observation not learned: %s", error)
                since_snapshot += 1
            now = time.monotonic()
            if since_snapshot and (
                since_snapshot >= self.snapshot_every
                or (now - snapshot_at) * 1000 >= self.snapshot_ms
            ):
                self._publish()
                since_snapshot, snapshot_at = 0, now
            if (
                self.checkpoint_seconds is not None
                and now - checkpoint_at >= self.checkpoint_seconds
            ):
                self.save()
                checkpoint_at = now

    @property
    def alive(self) -> bool:
        """Whether the learner thread is running."""
        return self._thread.is_alive()

    def _copy(self) -> Snapshot:
        return Snapshot(self.model)

    def _publish(self) -> None:
        snapshot = self._copy()
        self._snapshot = self._step.reader = snapshot
        self.n_snapshots += 1
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)

    def save(self) -> None:
        """Write a checkpoint of the learning model (call from the learner thread or after
        `close`)."""
        if self.checkpoint_path is not None:
            self.model.save(self.checkpoint_path)

    def close(self) -> None:
        """Learn everything queued, publish a last snapshot, checkpoint, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._publish()
        self.save()

    def __enter__(self) -> OnlineModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _accepted(offer: Offer) -> Offer:
    """The offer, or its refusal raised in the caller's thread."""
    if offer.refused is not None:
        raise offer.refused
    return offer
