"""LearningThread: a learner on a background thread, predicting from snapshots meanwhile.

The engine of `stream_mtl.service.OnlineModel`: in a service's own process with
`OnlineModel(..., process=False)`, and inside the learner process otherwise
(`stream_mtl.learning_process`).

Predictions come from a read-only `Snapshot` of the model: a private copy that is never
changed once published and is swapped in (one reference assignment) after every
`snapshot_every` updates or `snapshot_ms` milliseconds, whichever comes first. A
prediction therefore never waits for a learning step and never sees half of one (but
it shares the process's GIL with it). Learning happens on one background thread, fed
by a bounded queue; when the queue is full, `learn` blocks for at most `block_timeout`
seconds and then raises `QueueFull` (or raises at once with `block_timeout=0`). Every
input is checked when it is offered, so a bad one raises in the caller's thread, naming
the fault, and is never queued.

Features predicted under a key are held, with the prediction served for them (bounded
in count, age and bytes), until `learn_label(key, y)` brings their labels; the rolling error
scores the prediction that was served. What happens to each event is the stream step's
(`stream_mtl.stream`): this module keeps the threads and the queue. With a `checkpoint`
path, the learner thread writes an atomic checkpoint, with the features held under keys,
every `checkpoint_seconds` seconds or `checkpoint_every` observations learned, and on
`close()`; `resumed_from` gives what goes on from it.

Nothing is accepted that cannot be learned: while the learner thread has stopped, or
while its last checkpoint failed (a full disk; retried every few seconds), `learn` and
`learn_label` raise `Unavailable` naming the reason, as they raise `QueueFull` (an
`Unavailable` too) when the queue is full. With a write-ahead log (`wal`, a folder;
`stream-mtl serve` keeps one beside its checkpoint unless told `--no-wal`), `learn` and
`learn_label` return only once the observation is on disk (`stream_mtl.wal`: group
commit), and a service resumed from its checkpoint learns again what was accepted after
it: a killed process loses nothing it acknowledged. Without one, an accepted
observation is in memory only until the next checkpoint: a kill loses at most
`checkpoint_every` learned observations (or `checkpoint_seconds`' worth) and what is
queued (`queue_size`). `close()` learns what is queued, for at most `close_timeout`
seconds when one is set (`serve`: 25 s); what is still queued then is left to the log,
or logged as lost.

With a `feed` (`stream_mtl.feed`: a Kafka topic, for one) the learner thread also learns
what the feed delivers, in order with the queue, and every checkpoint holds the feed's
position with the model: a service resumed from it goes on where the checkpoint left
off, so that each of the feed's messages is learned once (`resumed_from`). An event of
the feed on which the model raises is set aside by the feed, never stopping the learner.
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

from stream_mtl.exceptions import InvalidInput
from stream_mtl.feed import Feed
from stream_mtl.learner import MultiTaskLearner
from stream_mtl.observation import Observation
from stream_mtl.pending import writable_key
from stream_mtl.predictor import Snapshot
from stream_mtl.rolling_error import RollingError
from stream_mtl.stream import Labelled, Offer, StreamStep
from stream_mtl.wal import WriteAheadLog

__all__ = ["LearningThread", "QueueFull", "Unavailable"]

logger = logging.getLogger(__name__)

_STOP = object()
# Items of a feed delivered and not yet learned, at most: the feed waits beyond.
FEED_BACKLOG = 2


class _FeedItem(typing.NamedTuple):
    payload: typing.Any


class _CheckpointNow(typing.NamedTuple):
    done: threading.Event


# Seconds between tries while checkpoints fail (a full disk), at most.
CHECKPOINT_RETRY_SECONDS = 5.0


class Unavailable(RuntimeError):
    """Learning cannot take the observation now (the text says why): it was not queued,
    and may be sent again later."""


class QueueFull(Unavailable):
    """The learn queue stayed full for the whole wait: the observation was not queued."""


def resumed_from(
    checkpoint: str | os.PathLike, backend: str | None = None
) -> tuple[MultiTaskLearner, dict]:
    """The model in a service's checkpoint, and the options that go on from it: the
    checkpoint itself, the features held under keys, the last logged record learned,
    where a feed goes on from."""
    model, extra = MultiTaskLearner.load_with_extra(checkpoint, backend=backend)
    options = {
        "checkpoint": checkpoint,
        "held": extra.get("pending"),
        "replay_after": int(extra.get("wal_seq", 0)),
        "feed_state": extra.get("feed"),
    }
    return model, options


class LearningThread:
    """A `MultiTaskLearner` shared between threads: snapshot predictions, queued learning.

    `on_snapshot` is called with each snapshot published (the learner process puts it in
    shared memory), `on_idle` when the learner found nothing new to learn.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> published = []
    >>> learner = LearningThread(
    ...     MultiTaskLearner(tasks={"price": Regression()}, hidden=(8,)),
    ...     snapshot_every=100,
    ...     on_snapshot=published.append,
    ... )
    >>> for i in range(300):
    ...     waiting = learner.learn({"size": i % 10}, {"price": 2.0 * (i % 10)})
    >>> learner.close()
    >>> len(published) >= 3, published[-1].n_learned
    (True, {'price': 300})
    """

    # What a learner in a process has and this one has not: no shared memory, no process
    # of its own, no restarts; it publishes its snapshots itself, so they never lag.
    board: str | None = None
    pid: int | None = None
    n_restarts = 0
    snapshot_age = 0.0
    n_not_held = 0  # it holds keys itself: never down while it serves

    def __init__(
        self,
        model: MultiTaskLearner,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_seconds: float | None = None,
        checkpoint_every: int | None = None,
        snapshot_every: int = 1000,
        snapshot_ms: float = 50.0,
        queue_size: int = 10_000,
        block_timeout: float = 1.0,
        label_wait: int = 100_000,
        label_max_age: float | None = 3600.0,
        label_max_bytes: int = 100_000_000,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        window: int = 1000,
        close_timeout: float | None = None,
        held: dict | None = None,
        wal: str | os.PathLike | None = None,
        replay_after: int = 0,
        feed: Feed | None = None,
        feed_state: dict | None = None,
    ) -> None:
        if (checkpoint_seconds is not None or checkpoint_every is not None) and checkpoint is None:
            raise InvalidInput("checkpoint_seconds and checkpoint_every need a checkpoint path")
        if feed is not None and checkpoint is None:
            raise InvalidInput("a feed needs a checkpoint path: its position is kept there")
        if checkpoint_every is not None and (
            not isinstance(checkpoint_every, int) or checkpoint_every < 1
        ):
            raise InvalidInput(
                f"checkpoint_every must be a positive integer, got {checkpoint_every!r}"
            )
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise InvalidInput(f"snapshot_every must be a positive integer, got {snapshot_every!r}")
        self.model = model
        self.checkpoint_path = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_every = checkpoint_every
        self.snapshot_every = snapshot_every
        self.snapshot_ms = snapshot_ms
        self.block_timeout = block_timeout
        self.label_max_age = label_max_age
        self.on_snapshot = on_snapshot
        self.on_idle = on_idle  # called by the learner thread when nothing is new
        self.close_timeout = close_timeout
        self.n_queued = 0
        self.n_refused = 0
        self.n_snapshots = 0
        self.learn_errors = 0
        self.n_checkpoint_failures = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._stop_now = False  # close() ran out of time: stop without learning the rest
        self._stopped_by: str | None = None  # why the learner thread died, if it did
        self._checkpoint_error: str | None = None  # why the last checkpoint failed
        self._snapshot = self._copy()
        self._step = StreamStep(
            model,
            reader=self._snapshot,
            label_wait=label_wait,
            max_pending=label_wait,
            label_max_age=label_max_age,
            label_max_bytes=label_max_bytes,
            window=window,
            contain_errors=feed is not None,  # one bad message must not stop the topic
        )
        if held is not None:  # what a checkpoint of this service held under keys
            self._step.load_pending(held)
        self._wal = None if wal is None else WriteAheadLog(wal, start_after=replay_after)
        self._enqueue_lock = threading.Lock()  # log order is queue order
        self._reserved_features: dict = {}  # new features accepted, not yet learned
        self._learned_seq = replay_after  # the last logged record learned
        if self._wal is not None:
            self._replay(replay_after)
        self._feed = feed
        self._feed_room = threading.Semaphore(FEED_BACKLOG)
        self._thread = threading.Thread(target=self._run_learner, name="stream-mtl-learner")
        self._thread.daemon = True
        if feed is not None:
            try:
                feed.start(self._deliver, self._checkpoint_now, feed_state)
            except BaseException:
                if self._wal is not None:
                    self._wal.close()
                raise
        self._thread.start()

    def _replay(self, after: int) -> None:
        """Learn the logged records after `after` (accepted, not in the checkpoint)."""
        n = 0
        for seq, x, y, served in self._wal.replay(after):  # type: ignore[union-attr]
            for _row, error in self._step.learn([Labelled(x, y, served)]):
                logger.warning("a logged observation was not learned: %s", error)
            self._learned_seq = seq
            n += 1
        if n:
            logger.info("learned %d observations again from the write-ahead log", n)
            self._publish()

    # -- predicting (any thread) -----------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The read-only copy of the model that predictions come from now; never changed
        once published."""
        return self._snapshot

    def predict(self, x: dict, key: Hashable | None = None) -> dict:
        """Predictions for `x` from the current snapshot; with a `key`, `x` and the
        prediction are held for `learn_label(key, y)`."""
        if key is not None and self.checkpoint_path is not None:
            key = writable_key(key)  # held keys go into checkpoints
        return _accepted(self._step.offer(Observation(x, key=key))).prediction

    # -- learning (any thread offers, one thread learns) -----------------------------------

    def hold(self, key: Hashable, x: dict, served: dict) -> None:
        """Hold `x` and the prediction `served` for it under `key`, for `learn_label`
        (a prediction made elsewhere: a serving process's, from its snapshot)."""
        self._step.hold(key, x, served)

    def holds(self, key: Hashable) -> bool:
        """Whether features are held under `key` for `learn_label` (nothing is claimed)."""
        return self._step.holds(key)

    def learn(self, x: dict, y: dict) -> int:
        """Queue `(x, y)` for learning; raises at once if the model would refuse it. The
        number of observations waiting to be learned.

        Its rolling error scores the snapshot's prediction for `x` at the time of the call.
        """
        self._check_available()
        self._enqueue(_accepted(self._step.offer(Observation(x, y))).ready)
        return self._queue.qsize()

    def learn_label(self, key: Hashable, y: dict) -> int:
        """Learn `y` with the features held under `key` by `predict(x, key=key)`; raises
        `UnknownKey` if none are held. Refused for a full queue (or while learning is
        unavailable), the features stay held, so that the labels may be sent again."""
        self._check_available()
        ready = _accepted(self._step.offer(Observation(None, y, key=key))).ready
        try:
            self._enqueue(ready)
        except (Unavailable, InvalidInput):
            for row in ready:
                self._step.hold_again(key, row)
            raise
        return self._queue.qsize()

    @property
    def unavailable(self) -> str | None:
        """Why learning cannot take observations now (the learner stopped, or its last
        checkpoint failed), or None when it can."""
        if self._stopped_by is not None or not self._thread.is_alive():
            return f"the learner stopped: {self._stopped_by or 'closed'}"
        if self._checkpoint_error is not None:
            return (
                f"the last checkpoint failed ({self._checkpoint_error}); observations are "
                "refused until one succeeds"
            )
        return None

    def _check_available(self) -> None:
        if self._closed:
            raise RuntimeError("this OnlineModel is closed")
        reason = self.unavailable
        if reason is not None:
            raise Unavailable(reason)

    def _enqueue(self, rows: list[Labelled]) -> None:
        """Queue `rows` (with the log: log them first, in queue order, and return once
        they are on disk)."""
        self._check_available()
        if not rows:
            return
        deadline = time.monotonic() + self.block_timeout
        while True:  # wait for room outside the lock, so that no caller waits for another
            with self._enqueue_lock:
                if self._queue.qsize() + len(rows) <= self._queue.maxsize:
                    last = self._queue_rows(rows)
                    break
            if time.monotonic() >= deadline:
                self.n_refused += 1
                raise QueueFull(
                    f"the learn queue is full ({self._queue.maxsize} observations waiting); "
                    "learning is slower than the labels come"
                )
            time.sleep(0.001)
        if self._wal is not None:
            try:
                self._wal.wait(last)
            except OSError as error:  # queued, but not durable: say so
                raise Unavailable(f"accepted but not on disk: {error}") from None

    def _queue_rows(self, rows: list[Labelled]) -> int:
        """Under the enqueue lock, with room in the queue: count the rows' new features
        against the bound, log them, queue them; the last log sequence number (0: none)."""
        reserved = self._reserved_features
        added: list = []
        try:
            for row in rows:  # the learning model's bound, counting what is queued
                added += self.model._encoder.reserve(row.x, reserved)
            last = 0
            if self._wal is not None:
                try:
                    last = self._wal.append((row.x, row.y, row.served) for row in rows)
                except OSError as error:
                    raise Unavailable(str(error)) from None
        except Exception:  # refused: the features it reserved go back
            for name in added:
                reserved.pop(name, None)
            raise
        seqs = range(last - len(rows) + 1, last + 1) if last else [0] * len(rows)
        for seq, row in zip(seqs, rows):
            self._queue.put_nowait((seq, row))  # room was made sure of: only we add
        self.n_queued += len(rows)
        return last

    # -- a feed (its own thread delivers) ----------------------------------------------------

    def _deliver(self, payload: typing.Any) -> bool:
        """Queue one item of the feed once fewer than `FEED_BACKLOG` wait; False (and not
        queued) once the learner is closing or stopped."""
        while self._takes_feed():
            if self._feed_room.acquire(timeout=0.1):
                break
        else:
            return False
        while self._takes_feed():
            try:
                self._queue.put(_FeedItem(payload), timeout=0.1)
                return True
            except queue.Full:
                continue
        self._feed_room.release()
        return False

    def _takes_feed(self) -> bool:
        """Not closing, and the learner thread not ended (or not started yet)."""
        started = self._thread.ident is not None
        return (
            not self._closed
            and self._stopped_by is None
            and (self._thread.is_alive() or not started)
        )

    def _checkpoint_now(self, timeout: float) -> bool:
        """Whether everything queued before now was learned and checkpointed within
        `timeout` seconds (the feed commits, say, before its partitions move)."""
        done = threading.Event()
        try:
            self._queue.put(_CheckpointNow(done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout) and self._checkpoint_error is None

    @property
    def errors(self) -> dict[str, RollingError]:
        """Each task's rolling error: the predictions served, scored by their labels."""
        return self._step.scorer.errors

    def expired(self) -> dict[str, int]:
        """Features held under a key whose labels never came, by cause: count, age, bytes."""
        return self._step.expired()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _run_learner(self) -> None:
        try:
            self._learn_loop()
        except BaseException as error:  # whatever it is, /learn must stop saying yes
            self._stopped_by = repr(error)
            logger.exception("the learner thread stopped; learning is refused from now on")

    def _learn_loop(self) -> None:
        since_snapshot, snapshot_at = 0, time.monotonic()
        since_checkpoint, checkpoint_at = 0, time.monotonic()
        while not self._stop_now:
            try:
                item = self._queue.get(timeout=self.snapshot_ms / 1000)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is None and not since_snapshot and self.on_idle is not None:
                self.on_idle()  # what readers have is current
            if isinstance(item, _CheckpointNow):
                self._try_to_save()
                since_checkpoint, checkpoint_at = 0, time.monotonic()
                item.done.set()
                continue
            if isinstance(item, _FeedItem):
                try:
                    n = self._feed.learn(item.payload, self._step)  # type: ignore[union-attr]
                finally:
                    self._feed_room.release()
                since_snapshot += n
                since_checkpoint += n
            elif item is not None:
                seq, row = item
                for _row, error in self._step.learn([row]):  # checked when offered; rare
                    self.learn_errors += 1
                    logger.warning("observation not learned: %s", error)
                if seq:
                    self._learned_seq = seq
                since_snapshot += 1
                since_checkpoint += 1
            now = time.monotonic()
            if since_snapshot and (
                since_snapshot >= self.snapshot_every
                or (now - snapshot_at) * 1000 >= self.snapshot_ms
            ):
                self._publish()
                since_snapshot, snapshot_at = 0, now
            if self._checkpoint_due(now - checkpoint_at, since_checkpoint):
                self._try_to_save()
                since_checkpoint, checkpoint_at = 0, now

    def _checkpoint_due(self, seconds: float, learned: int) -> bool:
        """Whether to checkpoint, `seconds` and `learned` observations after the last
        one (while checkpoints fail: every few seconds)."""
        if self._checkpoint_error is not None:
            every = self.checkpoint_seconds or CHECKPOINT_RETRY_SECONDS
            return seconds >= min(every, CHECKPOINT_RETRY_SECONDS)
        if self.checkpoint_every is not None and learned >= self.checkpoint_every:
            return True
        return self.checkpoint_seconds is not None and seconds >= self.checkpoint_seconds

    def _try_to_save(self) -> None:
        """A periodic checkpoint; one that fails is logged, and refuses learning until
        one succeeds."""
        try:
            self.save()
        except Exception as error:
            self.n_checkpoint_failures += 1
            self._checkpoint_error = f"{type(error).__name__}: {error}"
            logger.error("checkpoint failed; learning is refused until one succeeds: %s", error)
        else:
            if self._checkpoint_error is not None:
                logger.info("checkpoints succeed again; learning is accepted")
            self._checkpoint_error = None

    @property
    def alive(self) -> bool:
        """Whether the learner thread is running."""
        return self._thread.is_alive() and self._stopped_by is None

    def _copy(self) -> Snapshot:
        return Snapshot(self.model)

    def _publish(self) -> None:
        snapshot = self._copy()
        self._snapshot = self._step.reader = snapshot
        self.n_snapshots += 1
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)

    def save(self) -> None:
        """Write a checkpoint of the learning model and of the features held under keys
        (call from the learner thread or after `close`)."""
        if self.checkpoint_path is None:
            return
        learned = self._learned_seq
        if self._wal is not None:
            self._wal.rotate()  # the records after `learned` are replayed from here on
        extra = {"pending": self._step.pending_state(), "wal_seq": learned}
        if self._feed is not None:
            extra["feed"] = self._feed.state()
        self.model.save(self.checkpoint_path, extra=extra)
        if self._wal is not None:
            self._wal.forget(learned)
        if self._feed is not None:
            self._feed.checkpointed(extra["feed"])

    def close(self) -> None:
        """Learn what is queued (for at most `close_timeout` seconds, if set), publish a
        last snapshot, checkpoint, stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._feed is not None:
            self._feed.stop()  # nothing more is delivered; what was is learned below
        timeout = self.close_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                self._stop_now = True
            self._thread.join(None if deadline is None else max(deadline - time.monotonic(), 0))
            if self._thread.is_alive():
                self._stop_now = True
                self._thread.join()  # the step under way, then the loop sees the flag
        # accepted observations are (seq, row) pairs; a feed's items are read again
        lost = sum(type(item) is tuple for item in list(self._queue.queue))
        if lost and self._wal is not None:
            logger.warning("closed with %d accepted observations left to the log", lost)
        elif lost:
            logger.error("closed with %d accepted observations not learned", lost)
        self._publish()
        try:
            self.save()
        finally:
            if self._wal is not None:
                self._wal.close()
            if self._feed is not None:
                self._feed.close()

    def status(self) -> dict:
        """The counts a service exports, at this moment."""
        return {
            "queue_depth": self.queue_depth,
            "n_queued": self.n_queued,
            "n_refused": self.n_refused,
            "n_snapshots": self.n_snapshots,
            "learn_errors": self.learn_errors,
            "n_checkpoint_failures": self.n_checkpoint_failures,
            "unavailable": self.unavailable,
            "expired": self.expired(),
            "held": len(self._step.pending),
            "errors": dict(self.errors),
            **({} if self._feed is None else {"source": self._feed.status()}),
        }

    def __enter__(self) -> LearningThread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _accepted(offer: Offer) -> Offer:
    """The offer, or its refusal raised in the caller's thread."""
    if offer.refused is not None:
        raise offer.refused
    return offer
