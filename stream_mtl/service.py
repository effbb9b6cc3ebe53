"""OnlineModel: a learner embedded in a live service - predictions never wait for learning.

By default the learner runs in a child process (`stream_mtl.learning_process`): it learns
from a bounded queue, holds the features predicted under a key until their labels come,
checkpoints, and publishes a read-only snapshot of the model to shared memory after
every `snapshot_every` updates or `snapshot_ms` milliseconds. Predictions are computed
in the calling process from the latest snapshot, so a prediction never waits for a
learning step, not even for the GIL. A learner process that dies is restarted from its
checkpoint while predictions go on. `OnlineModel(..., process=False)` runs the same
learner on a thread of the calling process instead (`stream_mtl.learning_thread`): no
child process to start, for tests and small services, but a prediction then shares the
GIL with learning.

The rest is the same in both: every input is checked when offered and a bad one raises
in the caller's thread (`InvalidInput`), `learn` raises `Unavailable` (or `QueueFull`)
for what cannot be learned now, and with a write-ahead log (`wal`) a return means the
observation is on disk.
"""

from __future__ import annotations

import asyncio
import os
import typing
from collections.abc import Hashable

from stream_mtl.backends.numpy import warm_up
from stream_mtl.exceptions import UnknownKey
from stream_mtl.learner import MultiTaskLearner
from stream_mtl.learning_process import LearnerClient, LearningProcess
from stream_mtl.learning_thread import LearningThread, QueueFull, Unavailable, resumed_from
from stream_mtl.predictor import Snapshot
from stream_mtl.rolling_error import RollingError

__all__ = ["OnlineModel", "QueueFull", "Unavailable", "UnknownKey"]  # UnknownKey: learn_label


class OnlineModel:
    """A `MultiTaskLearner` in a live service: snapshot predictions, queued learning.

    Parameters
    ----------
    model
        The learner; it is learned in the learner process (or thread) from now on.
    process
        Learn in a child process (True, the default) or on a thread of this one.
    restart, restart_delay
        With `process`: start a learner process that died again, from the checkpoint
        (after `restart_delay` seconds, doubled after each failed try up to 30 s).
    listen
        With `process`: a Unix socket path where the learner process also takes the
        calls of other serving processes (`OnlineModel.attach`).
    label_grace
        With `listen`: seconds a label sent under a key whose features are not held yet
        waits for them (default 0.1; 0: refused at once, `UnknownKey`). The features come
        from the serving process that predicted, on its own connection, so a label that
        another serving process forwards at once may arrive first.
    max_late_labels
        With `listen`: labels that wait so at once, at most (default 16, up to 256; each
        takes a thread of the learner process); beyond, one is refused at once, so that
        labels for keys never predicted cannot tie up the learner.
    nice
        With `process`: added to the learner process's nice value, 0 to 19 (default 19,
        the lowest priority): where learning and serving compete for a core, predictions
        go first. Learning then gets what serving leaves; on a saturated machine the
        learn queue fills, and `learn` raises `QueueFull`. 0 shares the cores evenly.
    send_max_bytes
        With `process`: bytes of calls (learning, features to hold) waiting to be sent
        to a learner process that is not reading them, at most (default 4 MiB). What
        the socket does not take at once waits for a thread of its own to write it, so
        that a learner that stops, starves or stalls never makes a caller wait, a
        prediction under a key included: beyond this bound `learn` raises
        `Unavailable`, and features are not held.
    checkpoint, checkpoint_seconds, checkpoint_every
        Where and how often (seconds, observations learned: whichever comes first) to
        write an atomic checkpoint, which includes the features held under keys; also
        written by `close`. Without a `wal`, a killed service loses what was learned
        since the last checkpoint and what is queued.
    snapshot_every, snapshot_ms
        A new snapshot after this many updates or milliseconds, whichever comes first
        (1,000 and 50: at the rates a learner reaches, one every 50 ms). Each costs the
        learner about 0.3 ms to make and each serving process 0.01 to 0.08 ms to load
        (a copy of the new arrays; 0.1 to 0.5 ms where the model grew, a full load:
        see `stream_mtl.snapshot_wire`), during which a prediction there waits for
        the GIL. With full loads every time, one snapshot after every 100 updates at
        10,000 updates a second raised predict p99 from 0.11-0.13 to 0.20-0.38 ms.
    queue_size, block_timeout
        Observations waiting to be learned, at most; how long `learn` waits for room
        before it raises `QueueFull` (0: at once).
    label_wait, label_max_age, label_max_bytes
        Bounds on the features held for labels sent later under a key: count, age
        (seconds) and bytes.
    close_timeout
        Seconds `close` spends learning what is queued, at most (None: all of it).
    held, wal, replay_after
        Features held by a checkpoint; the write-ahead log's folder; the last logged
        record the checkpoint learned (`OnlineModel.resume` sets them).
    feed, feed_state
        A source the learner consumes itself while the service serves (`stream_mtl.feed`;
        `stream_mtl.connectors.kafka_feed.KafkaFeed` for a Kafka topic), its position
        kept in every checkpoint so that each message is learned once across restarts;
        where it goes on from (`OnlineModel.resume` sets it). Needs a `checkpoint`.
    window
        Labels in each task's rolling error.
    on_snapshot
        With `process=False` only: called with each new snapshot.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> service = OnlineModel(MultiTaskLearner(tasks={"price": Regression()}, hidden=(8,)))
    >>> for i in range(300):
    ...     waiting = service.learn({"size": i % 10}, {"price": 2.0 * (i % 10)})
    >>> service.predict({"size": 4}, key="order-1") is not None
    True
    >>> waiting = service.learn_label("order-1", {"price": 8.0})
    >>> service.close()
    >>> service.model.n_learned
    {'price': 301}
    """

    def __init__(
        self, model: MultiTaskLearner, *, process: bool = True, **options: typing.Any
    ) -> None:
        model.warm_up()  # predictions are computed here
        if process:
            self._engine: LearningThread | LearningProcess | LearnerClient = LearningProcess(
                model, **options
            )
        else:
            for name in (
                "restart",
                "restart_delay",
                "listen",
                "label_grace",
                "max_late_labels",
                "nice",
                "send_max_bytes",
            ):
                options.pop(name, None)
            self._engine = LearningThread(model, **options)

    @classmethod
    def attach(cls, board: str, address: str | os.PathLike, **options: typing.Any) -> OnlineModel:
        """An `OnlineModel` in another serving process, on the learner process of an
        `OnlineModel(..., listen=address)` (its `board` names its snapshots): it predicts
        from the same snapshots and sends learning to the same learner. Closing it leaves
        the learner to its owner (`stream-mtl serve --workers N` gives each worker one).
        Options: `block_timeout`, `checkpointed` (keys must be writable), `connect_timeout`,
        `send_max_bytes`.
        """
        warm_up()
        service = cls.__new__(cls)
        service._engine = LearnerClient(board, address, **options)
        return service

    @classmethod
    def resume(
        cls, checkpoint: str | os.PathLike, backend: str | None = None, **options: typing.Any
    ) -> OnlineModel:
        """An `OnlineModel` that goes on from its checkpoint: the model and the features
        held under keys (their ages kept), checkpointing to the same file."""
        model, resumed = resumed_from(checkpoint, backend)
        return cls(model, **resumed, **options)

    # -- predicting (any thread) -----------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The read-only copy of the model that predictions come from now."""
        return self._engine.snapshot

    @property
    def process(self) -> bool:
        """Whether the learner runs in a process of its own."""
        return not isinstance(self._engine, LearningThread)

    @property
    def snapshot_age(self) -> float:
        """Seconds since the learner last published a snapshot or said nothing was new:
        how far behind the learning model predictions may be (0 in-thread, where the
        learner publishes itself)."""
        return self._engine.snapshot_age

    @property
    def snapshot_loads(self) -> dict[str, int]:
        """Snapshots this process loaded from the learner process, by how: "copied"
        (the new arrays into a snapshot no prediction held any more: the cheap way) or
        "unpickled" (whole: the first, and those after the model grew or while a
        caller held the spare). Empty with the learner on a thread, whose snapshots
        need no loading."""
        return self._engine.snapshot_loads if self.process else {}

    def predict(self, x: dict, key: Hashable | None = None) -> dict:
        """Predictions for `x` from the current snapshot; with a `key`, `x` and the
        prediction are held for `learn_label(key, y)`."""
        return self._engine.predict(x, key)

    def predict_proba(self, x: dict) -> dict:
        return self.snapshot.predict_proba_one(x)

    def predict_many(self, X: typing.Any) -> typing.Any:
        """`predict_many` of the current snapshot: a DataFrame with a column per task."""
        return self.snapshot.predict_many(X)

    # -- learning --------------------------------------------------------------------------

    def learn(self, x: dict, y: dict) -> int:
        """Queue `(x, y)` for learning; raises at once if the model would refuse it. The
        number of observations waiting to be learned.

        Its rolling error scores the snapshot's prediction for `x` at the time of the call.
        """
        return self._engine.learn(x, y)

    def learn_label(self, key: Hashable, y: dict) -> int:
        """Learn `y` with the features held under `key` by `predict(x, key=key)`; raises
        `UnknownKey` if none are held. Refused for a full queue (or while learning is
        unavailable), the features stay held, so that the labels may be sent again."""
        return self._engine.learn_label(key, y)

    async def learn_async(self, x: dict, y: dict) -> int:
        """`learn` for a coroutine (an asyncio service's request handler). With the
        learner in a process no thread waits for its answer: the answer wakes the event
        loop. On a thread, `learn` runs in the loop's default executor, since it may
        wait for room in the queue."""
        if not self.process:
            return await asyncio.get_running_loop().run_in_executor(None, self.learn, x, y)
        return await self._engine.learn_async(x, y)

    async def learn_label_async(self, key: Hashable, y: dict) -> int:
        """`learn_label` for a coroutine, as `learn_async` is `learn`'s."""
        if not self.process:
            return await asyncio.get_running_loop().run_in_executor(None, self.learn_label, key, y)
        return await self._engine.learn_label_async(key, y)

    @property
    def unavailable(self) -> str | None:
        """Why learning cannot take observations now (the learner stopped, or its last
        checkpoint failed), or None when it can."""
        return self._engine.unavailable

    @property
    def alive(self) -> bool:
        """Whether the learner is running."""
        return self._engine.alive

    @property
    def board(self) -> str | None:
        """The shared memory the learner process publishes snapshots on (None in-thread):
        with `listen`, what `OnlineModel.attach` needs."""
        return self._engine.board

    @property
    def learner_pid(self) -> int | None:
        """The learner process's id (None in-thread, once closed, or while it is down)."""
        return self._engine.pid

    @property
    def n_restarts(self) -> int | None:
        """How many times a learner process that died was started again (None while an
        attached one cannot ask)."""
        return self._engine.n_restarts

    @property
    def n_not_held(self) -> int:
        """Predictions under a key that were served while the learner process was down,
        and so not held for their labels (labels sent later for them get `UnknownKey`)."""
        return self._engine.n_not_held

    def status(self) -> dict:
        """The learner's counts: queue depth, queued, refused, snapshots, learn errors,
        checkpoint failures, features held and expired, rolling errors, and `unavailable`
        (raises `Unavailable` while a learner process is down)."""
        return self._engine.status()

    @property
    def errors(self) -> dict[str, RollingError]:
        """Each task's rolling error: the predictions served, scored by their labels."""
        return self.status()["errors"]

    def expired(self) -> dict[str, int]:
        """Features held under a key whose labels never came, by cause: count, age, bytes."""
        return self.status()["expired"]

    @property
    def queue_depth(self) -> int:
        return self.status()["queue_depth"]

    @property
    def n_queued(self) -> int:
        return self.status()["n_queued"]

    @property
    def n_refused(self) -> int:
        return self.status()["n_refused"]

    @property
    def n_snapshots(self) -> int:
        return self.status()["n_snapshots"]

    @property
    def learn_errors(self) -> int:
        return self.status()["learn_errors"]

    @property
    def n_checkpoint_failures(self) -> int:
        return self.status()["n_checkpoint_failures"]

    @property
    def model(self) -> MultiTaskLearner:
        """The learning model: in-thread, always; with a learner process, once closed."""
        return self._engine.model

    @property
    def block_timeout(self) -> float:
        return self._engine.block_timeout

    @block_timeout.setter
    def block_timeout(self, seconds: float) -> None:
        if not isinstance(self._engine, LearningThread):
            raise AttributeError("block_timeout is set when the learner process starts")
        self._engine.block_timeout = seconds

    def save(self) -> None:
        """Write a checkpoint now (in-thread, after `close` or from the learner thread)."""
        if not isinstance(self._engine, LearningThread):
            raise AttributeError("the learner process checkpoints itself, and on close()")
        self._engine.save()

    def close(self) -> None:
        """Learn what is queued (for at most `close_timeout` seconds, if set), publish a
        last snapshot, checkpoint, stop the learner."""
        self._engine.close()

    def __enter__(self) -> OnlineModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
