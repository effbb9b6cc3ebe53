"""KafkaFeed: a live service learns a Kafka topic while it serves, exactly once.

`stream-mtl serve --source kafka://HOST:PORT/TOPIC` (or `OnlineModel(model, feed=...)`)
gives the service's learner this feed (`stream_mtl.feed`). Its thread polls the topic
through a `KafkaSource` and delivers each poll, with the source's position after it, to
the learner; the learner thread learns the poll's messages (`learn_poll`: the same
check, predict, join and learn as `stream-mtl run`, a refused message set aside in the
dead-letter topic) in order with the observations posted over HTTP. Each checkpoint of
the service then holds the position of the last poll learned beside the model and the
held features, and that position is committed to the group only once the checkpoint is
on disk. A learner restarted from the checkpoint (a killed learner process, a restarted
service) seeks to it: no message is lost or learned twice, whatever the moment of the
kill. Predictions and dead letters sent after the last checkpoint are sent again then
(at least once). Before the group moves a partition to another member, the learner
learns what was delivered, checkpoints, and the feed commits.
"""

from __future__ import annotations

import collections
import logging
import threading
import typing
from collections.abc import Callable

from stream_mtl.connectors.kafka import KafkaSink, KafkaSource, Message, Position
from stream_mtl.connectors.learning_loop import learn_poll
from stream_mtl.exceptions import InvalidInput
from stream_mtl.stream import StreamStep

__all__ = ["KafkaFeed"]

logger = logging.getLogger(__name__)

# Seconds the group's rebalance waits for the learner to checkpoint what was delivered.
REVOKE_CHECKPOINT_SECONDS = 20.0


class KafkaFeed:
    """A Kafka topic that a live service's learner consumes (see the module's docstring).

    Parameters
    ----------
    topic
        The topic to learn.
    bootstrap_servers, group_id, decoder, api_version, dead_letter_topic, ...
        The `KafkaSource`'s options, given by keyword.
    predictions_topic
        Send each message's prediction here, key preserved (at least once); None for none.
    max_poll_records
        Messages delivered to the learner at once. A poll is learned as one item, and a
        snapshot is published between two items only, so a snapshot may be older than
        `snapshot_ms` by one poll's learning (16 messages: about 30 ms on the reference
        model here); the learning rate was the same with 64 (about 500 messages/s on
        the tests' model here, within the noise).

    Nothing connects before `start`, so that the feed can be handed to a learner process.

    Examples
    --------
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> from stream_mtl.service import OnlineModel
    >>> feed = KafkaFeed("events", bootstrap_servers="localhost:9092", decoder="yaml")
    Traceback (most recent call last):
    ...
    ValueError: unknown message format 'yaml'; expected one of ['json', 'msgpack']
    >>> feed = KafkaFeed("events", bootstrap_servers="localhost:9092", group_id="svc")
    >>> feed
    KafkaFeed('events', group_id='svc')
    >>> model = MultiTaskLearner(tasks={"price": Regression()})
    >>> OnlineModel(model, process=False, feed=feed)
    Traceback (most recent call last):
    ...
    stream_mtl.exceptions.InvalidInput: a feed needs a checkpoint path: its position is kept there
    """

    def __init__(
        self,
        topic: str,
        *,
        predictions_topic: str | None = None,
        max_poll_records: int = 16,
        **source_options: typing.Any,
    ) -> None:
        from stream_mtl.connectors.messages import DECODERS, codec

        codec(source_options.get("decoder", "json"), DECODERS)  # an unknown format: now
        self.topic = topic
        self.predictions_topic = predictions_topic
        self.source_options = {"max_poll_records": max_poll_records, **source_options}
        self.learned: collections.Counter = collections.Counter()  # by partition
        self.n_learned = 0
        self.source: KafkaSource | None = None
        self._sink: KafkaSink | None = None
        self._position: Position = {}  # that of the last poll learned
        self._to_commit: Position | None = None  # checkpointed, not yet committed
        self._commit_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped_by: str | None = None  # why the feed's thread ended early, if it did
        self._deliver: Callable[[typing.Any], bool] | None = None
        self._checkpoint_now: Callable[[float], bool] | None = None

    def __repr__(self) -> str:
        group = self.source_options.get("group_id", "stream-mtl")
        return f"KafkaFeed({self.topic!r}, group_id={group!r})"

    def __getstate__(self) -> dict:
        if self.source is not None:
            raise TypeError("a KafkaFeed that has started cannot be sent elsewhere")
        state = self.__dict__.copy()
        del state["_commit_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._commit_lock = threading.Lock()

    # -- the feed's thread ----------------------------------------------------------------

    def start(
        self,
        deliver: Callable[[typing.Any], bool],
        checkpoint_now: Callable[[float], bool],
        state: dict | None,
    ) -> None:
        """Connect, seek to `state`'s position (a checkpoint's) and start consuming."""
        self.source = KafkaSource(self.topic, **self.source_options)
        try:
            if self.predictions_topic:
                self._sink = KafkaSink(
                    self.predictions_topic,
                    self.source_options.get("bootstrap_servers", "localhost:9092"),
                    api_version=self.source_options.get("api_version"),
                )
            if state is not None:
                self._restore(state)
        except BaseException:
            self.source.close()
            raise
        self.source.on_revoke = self._on_revoke
        self._deliver, self._checkpoint_now = deliver, checkpoint_now
        self._thread = threading.Thread(target=self._consume, name="stream-mtl-kafka", daemon=True)
        self._thread.start()

    def _restore(self, state: dict) -> None:
        if state.get("topic") != self.topic:
            raise InvalidInput(
                f"the checkpoint's feed is topic {state.get('topic')!r}, not {self.topic!r}: "
                "use another checkpoint file for another topic"
            )
        self.source.seek(state["position"])  # type: ignore[union-attr]
        self.learned.update({int(p): n for p, n in state["learned"].items()})
        self.source.rejected.add_counts(state.get("rejected", {}))  # type: ignore[union-attr]
        self.n_learned = sum(self.learned.values())
        self._position = dict(state["position"])
        logger.info("the %s topic goes on from %s", self.topic, self._position)

    def _consume(self) -> None:
        source = self.source
        assert source is not None and self._deliver is not None
        try:
            for batch in source.batches():
                self._commit(wait=True)
                # an empty poll too, when it moved: messages set aside, a seek on assignment
                if (batch or source.position != self._position) and not self._deliver(
                    (batch, source.position)
                ):
                    return
        except Exception as error:
            self._stopped_by = f"{type(error).__name__}: {error}"
            logger.exception("the Kafka feed stopped; the service goes on without it")

    def _on_revoke(self, revoked: set) -> None:
        # In the poll, before the group hands `revoked` to another member: what this
        # member learned of them must be checkpointed and committed first.
        if self._checkpoint_now is not None and self._checkpoint_now(REVOKE_CHECKPOINT_SECONDS):
            self._commit(wait=False)  # nothing may wait for the broker in a rebalance
        else:
            logger.warning(
                "partitions %s revoked before the learner checkpointed: another member "
                "may learn again what was learned here since the last checkpoint",
                sorted(tp.partition for tp in revoked),
            )

    def _commit(self, wait: bool) -> None:
        with self._commit_lock:
            position, self._to_commit = self._to_commit, None
        if position:  # one the broker does not take, the source sends again before its polls
            self.source.commit(position, wait=wait)  # type: ignore[union-attr]

    # -- the learner's thread -------------------------------------------------------------

    def learn(self, item: tuple[list[Message], Position], step: StreamStep) -> int:
        """Learn one poll's messages; the poll's position is then the feed's."""
        batch, position = item
        learned = learn_poll(step, batch, self._set_aside, self._sink)
        self.learned.update(message.partition for message in learned)
        self.n_learned += len(learned)
        self._position = position
        return len(batch)

    def _set_aside(self, message: Message, error: InvalidInput) -> None:
        self.source.set_aside(  # type: ignore[union-attr]
            error, message.partition, message.offset, message.key, message.value
        )

    def state(self) -> dict:
        """The position of the last poll learned, and counts; predictions and dead
        letters sent so far are flushed to the broker first."""
        if self._sink is not None:
            self._sink.flush()
        self.source.flush()  # type: ignore[union-attr]
        return {
            "topic": self.topic,
            "group": self.source.group_id,  # type: ignore[union-attr]
            "position": dict(self._position),
            "learned": {str(p): n for p, n in sorted(self.learned.items())},
            "rejected": dict(self.source.rejected),  # type: ignore[union-attr]
        }

    def checkpointed(self, state: dict) -> None:
        """The feed's thread commits `state`'s position after its next poll."""
        with self._commit_lock:
            self._to_commit = state["position"]

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        """Commit what the last checkpoint holds; close the consumer and producers."""
        if self.source is None:
            return
        self._checkpoint_now = None  # the learner has stopped: a late rebalance must not wait
        try:
            self._commit(wait=True)
        finally:
            self.source.close()
            if self._sink is not None:
                self._sink.close()

    def status(self) -> dict:
        source = self.source
        return {
            "topic": self.topic,
            "consumed": 0 if source is None else source.n_consumed,
            "learned": self.n_learned,
            "set_aside": 0 if source is None else sum(source.rejected.values()),
            "commit_failures": 0 if source is None else source.n_commit_failures,
            "position": dict(self._position),
            "stopped_by": self._stopped_by,
        }
