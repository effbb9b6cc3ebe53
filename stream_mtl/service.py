"""OnlineModel: a learner embedded in a live service - predicting from any thread while it learns.

Predictions come from a read-only snapshot of the model: a private copy that is never
changed once published and is swapped in (one reference assignment) after every
`snapshot_every` updates or `snapshot_ms` milliseconds, whichever comes first. A
prediction therefore never waits for a learning step and never sees half of one.
Learning happens on one background thread, fed by a bounded queue; when the queue is
full, `learn` blocks for at most `block_timeout` seconds and then raises `QueueFull` (or
raises at once with `block_timeout=0`, as the HTTP service does: its event loop must
never block). Every input is checked when it is offered, so a
bad one raises in the caller's thread, naming the fault, and is never queued.

Features predicted under a key are held (bounded in count and age) until
`learn_label(key, y)` brings their labels. With a `checkpoint` path, the learner thread
writes an atomic checkpoint every `checkpoint_seconds` seconds and on `close()`.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
import typing
from collections.abc import Callable, Hashable
from pathlib import Path

from stream_mtl.evaluate.rolling_error import RollingError
from stream_mtl.exceptions import InvalidInput
from stream_mtl.learner import MultiTaskLearner
from stream_mtl.pending import PendingFeatures

logger = logging.getLogger(__name__)

_STOP = object()


class QueueFull(RuntimeError):
    """The learn queue stayed full for the whole wait: the observation was not queued."""


class UnknownKey(KeyError):
    """`learn_label` for a key with no features held (never sent, or expired)."""


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
        on_snapshot: Callable[[MultiTaskLearner], None] | None = None,
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
        self.window = window
        self.errors: dict[str, RollingError] = {}  # by task: test-then-train, on the learner
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._pending = PendingFeatures(max_wait=label_wait, max_pending=label_wait)
        self._pending_lock = threading.Lock()
        self._closed = False
        self._snapshot = self._copy()
        self._thread = threading.Thread(target=self._learn_loop, name="stream-mtl-learner")
        self._thread.daemon = True
        self._thread.start()

    # -- predicting (any thread) -----------------------------------------------------------

    @property
    def snapshot(self) -> MultiTaskLearner:
        """The model predictions come from now; never changed once published."""
        return self._snapshot

    def predict(self, x: dict, key: Hashable | None = None) -> dict:
        """Predictions for `x` from the current snapshot; with a `key`, `x` is held for
        `learn_label(key, y)`."""
        prediction = self._snapshot.predict_one(x)
        if key is not None:
            with self._pending_lock:
                self._pending.hold(key, x, time.monotonic())
        return prediction

    def predict_proba(self, x: dict) -> dict:
        return self._snapshot.predict_proba_one(x)

    def predict_many(self, X: typing.Any) -> typing.Any:
        """`predict_many` of the current snapshot: a DataFrame with a column per task."""
        return self._snapshot.predict_many(X)

    # -- learning (any thread offers, one thread learns) -----------------------------------

    def learn(self, x: dict, y: dict) -> None:
        """Queue `(x, y)` for learning; raises at once if the model would refuse it."""
        self._snapshot.check_one(x, y)
        self._offer((x, y))

    def learn_label(self, key: Hashable, y: dict) -> None:
        """Learn `y` with the features held under `key` by `predict(x, key=key)`."""
        self._snapshot.check_one(None, y)
        with self._pending_lock:
            held = self._pending.claim(key)
        if held is None or (
            self.label_max_age is not None and time.monotonic() - held.extra > self.label_max_age
        ):
            raise UnknownKey(f"no features are held under key {key!r} (never sent, or expired)")
        self._offer((held.x, y))

    def _offer(self, item: tuple) -> None:
        if self._closed:
            raise RuntimeError("this OnlineModel is closed")
        try:
            self._queue.put(item, block=self.block_timeout > 0, timeout=self.block_timeout)
        except queue.Full:
            self.n_refused += 1
            raise QueueFull(
                f"the learn queue is full ({self._queue.maxsize} observations waiting); "
                "learning is slower than the labels come"
            ) from None
        self.n_queued += 1

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
                try:
                    self._score(*item)
                    self.model.learn_one(*item)
                    since_snapshot += 1
                except (ValueError, TypeError) as error:  # checked when offered; rare
                    self.learn_errors += 1
                    logger.warning("observation not learned: %s", error)
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

    def _score(self, x: dict, y: dict) -> None:
        """Each task's rolling error: the live model's prediction, then its label."""
        prediction = self.model.predict_one(x)
        for name, label in y.items():
            if name not in self.errors:
                self.errors[name] = RollingError(self.model.tasks[name].kind, self.window)
            self.errors[name].update(label, prediction.get(name))

    @property
    def alive(self) -> bool:
        """Whether the learner thread is running."""
        return self._thread.is_alive()

    def _copy(self) -> MultiTaskLearner:
        # The weighting strategy (and its drift detectors) is left out: predicting needs
        # only the encoder, the target scaling, the classes and the parameters.
        return copy.deepcopy(self.model, {id(self.model._weighting): None})

    def _publish(self) -> None:
        snapshot = self._copy()
        self._snapshot = snapshot
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
