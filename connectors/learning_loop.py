"""LearningLoop: consume a Kafka topic, predict, learn, checkpoint, then commit.

The loop is what `stream-mtl run` runs: the Kafka driver of the stream step
(`stream_mtl.stream.StreamStep`). For each poll of its `KafkaSource` the step checks,
predicts and joins every message before anything of the poll is learned (one
`learn_many` per run of rows with the same features when `batch_learning` is on, the
default on the torch backend, else `learn_one` per row); the loop sends each prediction
with its message's key to the `KafkaSink` (if any), sets a refused message aside in the
dead-letter topic with its reason, so that one bad record never stops or spoils a batch
(a message on which the model raises something unexpected too: it is set aside with the
exception's text and the traceback is logged), and counts what each partition learned.

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

from stream_mtl.connectors.kafka import KafkaSink, KafkaSource, Message
from stream_mtl.exceptions import InvalidInput
from stream_mtl.heap import frozen_heap
from stream_mtl.learner import MultiTaskLearner
from stream_mtl.stream import StreamStep

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
    label_wait, max_pending, label_max_age, label_max_bytes
        How long features wait for their labels (in later features messages, and in
        seconds: None for no limit by age), and how many keys and bytes are held at most.
    log_every
        Seconds between log lines on throughput and per-task rolling error.
    window
        Labels in each task's rolling error.
    on_learned
        Called with the messages of each learning step (tests count them).
    freeze_heap
        While it runs, the garbage collector skips the objects alive when it started
        (`stream_mtl.heap.frozen_heap`: the libraries' and the model's, scanned again at
        every full collection otherwise; 1.3x the messages per second on the torch
        backend in `benchmarks/kafka_throughput.py`). False leaves the collector alone.

    Examples
    --------
    Without a broker, the parameters are checked at once:

    >>> LearningLoop(None, None, "model.ckpt", checkpoint_every=0)
    Traceback (most recent call last):
    ...
    ValueError: checkpoint_every must be a positive integer, got 0
    >>> LearningLoop(None, None, "model.ckpt", freeze_heap="yes")
    Traceback (most recent call last):
    ...
    ValueError: freeze_heap must be True or False, got 'yes'
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
        label_max_age: float | None = None,
        label_max_bytes: int = 100_000_000,
        log_every: float = 10.0,
        window: int = 1000,
        on_learned: Callable[[list[Message]], None] | None = None,
        freeze_heap: bool = True,
    ) -> None:
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
        if not isinstance(freeze_heap, bool):
            raise ValueError(f"freeze_heap must be True or False, got {freeze_heap!r}")
        self.model = model
        self.source = source
        self.checkpoint_path = Path(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.resumed = False  # True when resume_or_start went on from a checkpoint
        self.sink = sink
        if batch_learning is None:
            batch_learning = model.backend == "torch"
        self.batch_learning = batch_learning
        self.step = StreamStep(
            model,
            label_wait=label_wait,
            max_pending=max_pending,
            label_max_age=label_max_age,
            label_max_bytes=label_max_bytes,
            batch=batch_learning,
            window=window,
            contain_errors=True,  # one message must never stop the loop
        )
        self.log_every = log_every
        self.on_learned = on_learned
        self.freeze_heap = freeze_heap
        self.learned: collections.Counter = collections.Counter()  # by partition
        self.n_checkpoints = 0
        self._consumed_at_checkpoint = 0
        self._checkpointed: dict | None = None
        self._in_batch = False
        self._last_log = (time.monotonic(), 0)
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
        self.step.pending.load_state(extra["pending"])
        self.learned.update({int(p): n for p, n in extra["learned"].items()})
        self.source.rejected.add_counts(extra.get("rejected", {}))
        self._checkpointed = extra["position"]

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until the source ends or `stop()`; then checkpoint, commit and close."""
        self.model.warm_up()  # before joining the group: a compile would outlast the poll interval
        try:
            with frozen_heap(self.freeze_heap):
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
            "pending": self.step.pending.state(),
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
        """Predict every message of the poll (and send the predictions), then learn."""
        learned = learn_poll(self.step, batch, self._set_aside, self.sink, self.batch_learning)
        self._learned(learned)

    def _set_aside(self, message: Message, error: InvalidInput) -> None:
        self.source.set_aside(error, message.partition, message.offset, message.key, message.value)

    def _learned(self, messages: list[Message]) -> None:
        self.learned.update(message.partition for message in messages)
        if self.on_learned is not None and messages:
            self.on_learned(messages)

    # -- reporting -----------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts and per-task rolling error so far."""
        return {
            "consumed": self.source.n_consumed,
            "learned": sum(self.learned.values()),
            "set_aside": sum(self.source.rejected.values()),
            "waiting_for_labels": len(self.step.pending),
            "expired": self.step.expired(),
            "checkpoints": self.n_checkpoints,
            "rolling": self.step.scorer.get(),
        }

    def _log(self) -> None:
        now, consumed = time.monotonic(), self.source.n_consumed
        then, consumed_then = self._last_log
        if now - then < self.log_every:
            return
        self._last_log = (now, consumed)
        stats = self.stats()
        errors = ", ".join(
            f"{name} {error.name} {error.get():.4g}"
            for name, error in self.step.scorer.errors.items()
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


def learn_poll(
    step: StreamStep,
    batch: list[Message],
    set_aside: Callable[[Message, InvalidInput], None],
    sink: KafkaSink | None = None,
    batch_learning: bool = False,
) -> list[Message]:
    """One poll through `step`: every message checked, predicted (the prediction sent to
    `sink`, key preserved) and held or joined before any is learned; a refused message
    goes to `set_aside` with why. The messages learned, in order."""
    observations = [message.observation for message in batch]
    if batch_learning:
        offers = step.offer_many(observations, batch)
    else:
        offers = [step.offer(obs, message) for obs, message in zip(observations, batch)]
    ready = []
    for message, offer in zip(batch, offers):
        if offer.refused is not None:
            set_aside(message, offer.refused)
            continue
        if offer.prediction is not None and sink is not None:
            sink.send(message.key, _prediction_record(message, offer.prediction))
        ready.extend(offer.ready)
    refused = step.learn(ready)
    for row, error in refused:
        set_aside(row.tag, error)
    not_learned = {id(row.tag) for row, _error in refused}
    return [row.tag for row in ready if id(row.tag) not in not_learned]


def _prediction_record(message: Message, prediction: dict) -> dict:
    obs = message.observation
    record = {"key": obs.key, "prediction": prediction}
    if obs.time is not None:
        record["time"] = obs.time
    record["partition"], record["offset"] = message.partition, message.offset
    return record
