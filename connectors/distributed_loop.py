"""DistributedLoop: several workers learn one model from a Kafka topic, exactly once.

Each worker of a torch.distributed group (`stream_mtl.distributed`) reads its own share of the
topic's partitions (p % workers == rank; `KafkaSource(share=...)`), so membership is
decided by the group's rendezvous and never by Kafka's rebalance. The workers go in
rounds, one poll each, and agree after every poll (one all-reduce of seven numbers):

1. whether to stop (one was told to, or all have been idle for `idle_timeout`);
2. whether to synchronise (a worker learned `sync_every` messages since the last
   synchronisation, or `sync_seconds` passed);
3. whether a worker's poll holds features or classes the model does not know; then
   every worker registers all of them, in rank order, before any learns them, so that
   the workers' columns always agree.

At a synchronisation every worker's state is gathered and merged
(`stream_mtl.averaging.merge_states`: estimates averaged, counts added, running moments
merged exactly), and each worker goes on from the merged model. Every
`checkpoint_every` messages (over all workers), when all are idle and on stop, the
synchronisation also writes one aligned checkpoint: rank 0 writes the merged model with
every partition's next offset and every worker's held features, atomically, and only
after that file exists does each worker commit its partitions' offsets.

Averaging N workers' models makes a step of the group from N steps, one per worker:
each round moves the model as far as one worker's share of it would, so that the
group's gradient-trained parts (the trunk, its heads) learn N times slower per message
than one worker would. The workers therefore step with N times the model's learning
rate (`lr_scaling="linear"`: the linear scaling rule of large-batch data-parallel
training, Goyal et al. 2017, "Accurate, Large Minibatch SGD"); the model, and its
checkpoints, keep the learning rate it was made with. The second-order heads need no
scaling: each worker's Newton step is an estimate from its own rows, and their mean is
one from all of them.

A worker that dies takes the group down (its collective calls fail); `torchrun
--max-restarts` starts the group again and every worker resumes from the last aligned
checkpoint, so each message is in the final model exactly once. Predictions and dead
letters sent since that checkpoint are sent again (at least once), as in `LearningLoop`.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import time
import typing

from kafka.partitioner.default import murmur2

from stream_mtl.averaging import State, merge_states
from stream_mtl.checkpoint import save_checkpoint
from stream_mtl.connectors.kafka import KafkaSource
from stream_mtl.connectors.learning_loop import LearningLoop
from stream_mtl.distributed import WorkerGroup
from stream_mtl.heap import frozen_heap
from stream_mtl.learner import MultiTaskLearner

logger = logging.getLogger(__name__)


LR_SCALINGS = ("linear", "none")


class Round(typing.NamedTuple):
    """What the workers tell each other after each poll, summed over the group."""

    stop: float  # workers told to stop
    idle: float  # workers without a message for idle_timeout
    empty: float  # workers whose poll was empty
    due: float  # workers due to synchronise (sync_every messages or sync_seconds)
    learned: float  # messages learned since the last synchronisation
    new_schema: float  # workers whose poll holds features or classes not yet known
    consumed: float  # messages consumed since the start, up to the last poll learned


class DistributedLoop(LearningLoop):
    """One model learned from a Kafka topic by every worker of `group`, exactly once.

    Parameters
    ----------
    model
        This worker's learner; every worker starts from rank 0's.
    source
        A `KafkaSource` made with `share=(group.rank, group.size)`.
    checkpoint
        The aligned checkpoint file, on a path every worker reads (rank 0 writes it).
    group
        The workers (`TorchGroup` under torchrun; `SoloGroup` for one worker).
    sync_every, sync_seconds
        The workers average their models when one of them has learned `sync_every`
        messages since the last time, or `sync_seconds` after it, whichever comes first.
    checkpoint_every
        Messages consumed by the whole group between aligned checkpoints (each at a
        synchronisation); also when all workers are idle, and on stop.
    idle_timeout
        Stop when every worker has had no message for this many seconds (None: run
        until `stop()`).
    lr_scaling
        `"linear"`: every worker steps with N times the model's learning rate (see the
        module's docstring); `"none"`: with the model's own.
    options
        As `LearningLoop`'s: sink, label_wait, max_pending, label_max_age,
        label_max_bytes, batch_learning, log_every, window, on_learned.

    `LearningLoop.resume_or_start(checkpoint, new_model, source, group=group, ...)` goes
    on from the aligned checkpoint when there is one; every worker starts from rank 0's
    model either way.

    Examples
    --------
    Without a broker, the parameters are checked at once:

    >>> from stream_mtl.distributed import SoloGroup
    >>> DistributedLoop(None, None, "model.ckpt", SoloGroup(), sync_every=0)
    Traceback (most recent call last):
    ...
    ValueError: sync_every must be a positive integer, got 0
    """

    def __init__(
        self,
        model: MultiTaskLearner,
        source: KafkaSource,
        checkpoint: str | os.PathLike,
        group: WorkerGroup,
        sync_every: int = 2_000,
        sync_seconds: float = 5.0,
        checkpoint_every: int = 10_000,
        idle_timeout: float | None = None,
        lr_scaling: str = "linear",
        **options: typing.Any,
    ) -> None:
        if not isinstance(sync_every, int) or isinstance(sync_every, bool) or sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, got {sync_every}")
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {lr_scaling!r}")
        if not (isinstance(sync_seconds, int | float) and sync_seconds > 0):
            raise ValueError(f"sync_seconds must be a positive number, got {sync_seconds}")
        if source.share != (group.rank, group.size):
            raise ValueError(
                f"worker {group.rank} of {group.size} needs a source made with "
                f"share=({group.rank}, {group.size}), not {source.share}"
            )
        super().__init__(model, source, checkpoint, checkpoint_every=checkpoint_every, **options)
        self.group = group
        self.sync_every = sync_every
        self.sync_seconds = sync_seconds
        self.idle_timeout = idle_timeout
        self.lr_scaling = lr_scaling
        source.idle_timeout = None  # the group decides when all are idle
        self.n_syncs = 0
        self.sync_time = 0.0  # seconds spent merging and checkpointing
        self._base: State | None = None  # the state every worker went on from
        self._stopping = False

    def _restore(self, extra: dict) -> None:
        if extra.get("topic") != self.source.topic:
            raise ValueError(
                f"checkpoint {str(self.checkpoint_path)!r} was written for topic "
                f"{extra.get('topic')!r}, not {self.source.topic!r}"
            )
        owned = set(self.source.partitions)
        position = {p: n for p, n in extra["position"].items() if int(p) in owned}
        self.source.seek(position)
        self.step.pending.load_state(self._held_features(extra))
        self.learned.update({int(p): n for p, n in extra["learned"].items() if int(p) in owned})
        if self.group.rank == 0:  # the checkpoint's counts are the group's sum: one takes them
            self.source.rejected.add_counts(extra.get("rejected", {}))
        self._checkpointed = position

    def _held_features(self, extra: dict) -> dict:
        """This worker's held features from an aligned checkpoint. Written by as many
        workers, they are its own; else each key goes to the worker that now owns the
        partition Kafka's default partitioner (murmur2) gives it."""
        held = extra.get("held", {})
        rank, size = self.group.rank, self.group.size
        if extra.get("workers") == size or not held:
            return held.get(str(rank), {"n_arrived": 0, "held": []})
        n_partitions = int(extra["partitions"])
        rows = [row for state in held.values() for row in state["held"]]
        mine = [row for row in rows if _partition(row[0], n_partitions) % size == rank]
        logger.info(
            "the checkpoint was written by %s workers, not %d: %d of %d held keys are "
            "this worker's by the default partitioner",
            extra.get("workers"),
            size,
            len(mine),
            len(rows),
        )
        mine.sort(key=lambda row: row[3])
        return {"n_arrived": max((row[3] for row in rows), default=0), "held": mine}

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Learn in rounds with the group until all are idle or one is stopped; then
        write an aligned checkpoint, commit, and close."""
        self.model.warm_up()
        self._adopt(self.group.gather(self.model._state() if self.group.rank == 0 else None)[0])
        logger.info(
            "worker %d of %d steps with learning rate %g (the model's %g, scaling %s)",
            self.group.rank,
            self.group.size,
            self.model.lr * self._lr_factor,
            self.model.lr,
            self.lr_scaling,
        )
        learned_at = self.source.position  # what a checkpoint may hold: learned, no more
        consumed = self.source.n_consumed  # messages consumed up to learned_at
        synced_at = idle_since = time.monotonic()
        since_sync = 0  # messages this worker learned since the last synchronisation
        consumed_at_checkpoint = 0  # by the whole group
        polls = self.source.batches()
        try:
            with frozen_heap(self.freeze_heap):
                while True:
                    batch = next(polls)
                    now = time.monotonic()
                    if batch:
                        idle_since = now
                    schema = self.model.unseen(
                        [m.observation.x for m in batch], [m.observation.y for m in batch]
                    )
                    round_ = Round(
                        *self.group.sum(
                            [
                                self._stopping,
                                self.idle_timeout is not None
                                and now - idle_since >= self.idle_timeout,
                                not batch,
                                since_sync >= self.sync_every
                                or now - synced_at >= self.sync_seconds,
                                since_sync,
                                bool(schema),
                                consumed,
                            ]
                        )
                    )
                    size = self.group.size
                    stop = round_.stop > 0 or round_.idle == size
                    unwritten = round_.consumed > consumed_at_checkpoint
                    write = unwritten and (
                        stop
                        or round_.empty == size
                        or round_.consumed - consumed_at_checkpoint >= self.checkpoint_every
                    )
                    if write or (round_.due > 0 and round_.learned > 0):
                        self._synchronise(learned_at, write)
                        synced_at, since_sync = time.monotonic(), 0
                        if write:
                            consumed_at_checkpoint = int(round_.consumed)
                    if stop:
                        break
                    if round_.new_schema > 0:
                        for found in self.group.gather(schema):
                            self.model.register(found)
                    if batch:
                        self._process(batch)
                        since_sync += len(batch)
                    learned_at, consumed = self.source.position, self.source.n_consumed
                    self._log()
        finally:
            self.source.close()
            if self.sink is not None:
                self.sink.close()

    def stop(self) -> None:
        """Stop at the end of the current round, with an aligned checkpoint (safe to call
        from a signal handler)."""
        self._stopping = True

    def checkpoint(self, wait: bool = True) -> None:
        """A worker alone never checkpoints: the group writes aligned checkpoints."""

    # -- synchronising -------------------------------------------------------------------

    @property
    def _lr_factor(self) -> int:
        """Each worker's learning rate over the model's (see `lr_scaling`)."""
        return self.group.size if self.lr_scaling == "linear" else 1

    def _adopt(self, state: State) -> None:
        """Go on from `state` (the group's merged model), kept as the next merge's base."""
        meta, arrays = state
        self._base = (copy.deepcopy(meta), {name: array.copy() for name, array in arrays.items()})
        model = MultiTaskLearner._from_state(meta, arrays, self.model.backend, self.model.device)
        model._scale_lr(self._lr_factor)
        self.model = self.step.model = self.step.reader = model

    def _synchronise(self, position: dict, write: bool) -> None:
        """Merge every worker's model; with `write`, the aligned checkpoint and commits."""
        started = time.monotonic()
        mine = {
            "state": self.model._state(),
            "position": position,
            "held": self.step.pending.state() if write else None,
            "learned": dict(self.learned),
            "rejected": dict(self.source.rejected),
        }
        if write:
            self.source.flush()  # dead letters durable before offsets move
            if self.sink is not None:
                self.sink.flush()
        workers = self.group.gather(mine)
        merged = merge_states(self._base, [worker["state"] for worker in workers])
        self._adopt(merged)
        self.n_syncs += 1
        if write:
            if self.group.rank == 0:
                self._write(merged, workers)
            self.group.barrier()  # the file is in place: now the offsets may move
            self.source.commit(position)
            self._checkpointed = position
            self.n_checkpoints += 1
        self.sync_time += time.monotonic() - started

    def _write(self, merged: State, workers: list[dict]) -> None:
        meta, arrays = merged
        position: dict[str, int] = {}
        learned: collections.Counter = collections.Counter()
        rejected: collections.Counter = collections.Counter()
        for worker in workers:
            position.update(worker["position"])
            learned.update({int(p): n for p, n in worker["learned"].items()})
            rejected.update(worker["rejected"])
        meta = dict(meta)
        meta["extra"] = {
            "topic": self.source.topic,
            "group": self.source.group_id,
            "workers": self.group.size,
            "partitions": self.source.n_partitions,
            "position": dict(sorted(position.items(), key=lambda item: int(item[0]))),
            "held": {str(rank): worker["held"] for rank, worker in enumerate(workers)},
            "learned": {str(p): n for p, n in sorted(learned.items())},
            "rejected": dict(rejected),
        }
        save_checkpoint(self.checkpoint_path, meta, arrays)
        logger.debug("aligned checkpoint %d at %s", self.n_checkpoints + 1, position)

    def stats(self) -> dict:
        """This worker's counts, with the group's synchronisations."""
        return {**super().stats(), "syncs": self.n_syncs, "sync_seconds": self.sync_time}


def _partition(key: object, n_partitions: int) -> int:
    """The partition Kafka's default partitioner gives a message with this key."""
    data = key.encode() if isinstance(key, str) else str(key).encode()
    return (murmur2(data) & 0x7FFFFFFF) % n_partitions
