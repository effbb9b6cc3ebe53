"""Kafka: a resumable source of observations, a sink for predictions, a dead-letter topic.

`KafkaSource` consumes a topic in a consumer group with manual offsets. It reports its
`position` (the next offset of every partition it owns) and commits only a position it
is given - the one a checkpoint has just stored - so that a restart from that checkpoint
(`seek`) neither loses nor repeats a message. When partitions are reassigned in the
group, each partition starts at the later of the checkpoint's position and the group's
committed offset, and an `on_revoke` callback lets the owner checkpoint and commit
before partitions are handed over. With `share=(rank, workers)` it takes no part in the
group's rebalances: it owns the partitions p with p % workers == rank, assigned
directly, so that workers that learn one model (`connectors.distributed_loop`) split the
topic as their own group decides, never as Kafka's does.

A message that cannot be read - whatever its bytes: not JSON, nested too deeply, of the
wrong shape, larger than `max_message_bytes` - goes to the dead-letter topic (when one
is given) with its reason, topic, partition, offset and original bytes (none for a
message too large to fetch); it is counted in `rejected`, and the consumer goes on.
`KafkaSink` sends JSON (or msgpack) values with their keys.

kafka-python talks to brokers older than 0.10 only when told their version: pass
`api_version=(0, 9)` for those; by default the version is detected.
"""

from __future__ import annotations

import base64
import collections
import logging
import socket
import time
import typing
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import RecordTooLargeError
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from stream_mtl.connectors.messages import (
    DECODERS,
    ENCODERS,
    Decoder,
    Encoder,
    MalformedMessage,
    codec,
    observation_from_message,
)
from stream_mtl.exceptions import InvalidInput
from stream_mtl.observation import Observation
from stream_mtl.stream import ReasonCounts

logger = logging.getLogger(__name__)

Position = dict[str, int]  # partition number (as text, for JSON) -> next offset to read
FRAMING_BYTES = 1024  # a fetch's room for a message's framing and key, beyond its value


class Message(typing.NamedTuple):
    """One consumed message: its observation and where it came from."""

    observation: Observation
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def parse_kafka_url(url: str) -> tuple[str, str]:
    """`kafka://HOST:PORT[,HOST:PORT...]/TOPIC` -> (bootstrap servers, topic).

    >>> parse_kafka_url("kafka://localhost:9092/events")
    ('localhost:9092', 'events')
    >>> parse_kafka_url("kafka://localhost:9092")
    Traceback (most recent call last):
    ...
    ValueError: expected kafka://HOST:PORT/TOPIC, got 'kafka://localhost:9092'
    """
    parts = urlsplit(url)
    topic = parts.path.strip("/")
    if parts.scheme != "kafka" or not parts.netloc or not topic or "/" in topic:
        raise ValueError(f"expected kafka://HOST:PORT/TOPIC, got {url!r}")
    return parts.netloc, topic


def parse_api_version(text: str | None) -> tuple[int, ...] | None:
    """`"0.9"` -> (0, 9); None or `"auto"` -> None (detect).

    >>> parse_api_version("0.9"), parse_api_version("auto")
    ((0, 9), None)
    """
    if text is None or text == "auto":
        return None
    try:
        version = tuple(int(part) for part in text.split("."))
    except ValueError:
        version = ()
    if len(version) < 2:
        raise ValueError(f"expected a broker version such as 0.9 or 2.8, got {text!r}")
    return version


class KafkaSink:
    """Sends values (JSON by default) with their keys to one topic.

    >>> KafkaSink("predictions", bootstrap_servers="localhost:9092", encoder="xml")
    Traceback (most recent call last):
    ...
    ValueError: unknown message format 'xml'; expected one of ['json', 'msgpack']
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str = "localhost:9092",
        encoder: str | Encoder = "json",
        api_version: tuple[int, ...] | None = None,
        **producer_config: typing.Any,
    ) -> None:
        self.topic = topic
        self.encode = codec(encoder, ENCODERS)
        self.n_sent = 0
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            api_version=api_version,
            acks="all",
            linger_ms=5,
            **producer_config,
        )

    def send(self, key: bytes | str | None, value: object) -> None:
        """Queue one record; `flush` (or a checkpoint) makes it durable."""
        if isinstance(key, str):
            key = key.encode()
        self._producer.send(self.topic, value=self.encode(value), key=key)
        self.n_sent += 1

    def flush(self, timeout: float | None = 30.0) -> None:
        self._producer.flush(timeout)

    def close(self) -> None:
        self._producer.close()


def wait_for_broker(servers: str, timeout_ms: int) -> None:
    """Return once one of `servers` ("host:port,host:port") accepts a connection; raise
    `KafkaTimeoutError` after `timeout_ms`. kafka-python, given the broker's version,
    would retry connecting for ever.

    >>> wait_for_broker("127.0.0.1:9", timeout_ms=200)
    Traceback (most recent call last):
    ...
    kafka.errors.KafkaTimeoutError: KafkaTimeoutError: no answer from 127.0.0.1:9 in 0.2 s
    """
    addresses = []
    for server in servers.split(","):
        server = server.strip()
        host, _, port = server.rpartition(":")
        if not host or server.endswith("]"):  # no port given
            host, port = server, "9092"
        addresses.append((host.strip("[]"), int(port)))
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        for address in addresses:
            try:
                socket.create_connection(address, timeout=0.5).close()
                return
            except OSError:
                pass
        if time.monotonic() >= deadline:
            raise KafkaTimeoutError(f"no answer from {servers} in {timeout_ms / 1000:g} s")
        time.sleep(0.1)


def dead_letter(
    reason: str, topic: str, partition: int, offset: int, key: bytes | None, value: bytes
) -> dict:
    """The record a dead-letter topic receives for one rejected message.

    >>> dead_letter("not valid JSON", "events", 2, 41, b"k", b"{oops")["value"]
    '{oops'
    """
    try:
        text, encoding = value.decode(), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(value).decode(), "base64"
    return {
        "reason": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None if key is None else key.decode(errors="replace"),
        "value": text,
        "value_encoding": encoding,
    }


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.source._revoked(revoked, lost=False)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.source._revoked(lost, lost=True)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.source._assigned(assigned)


class KafkaSource:
    """Observations from a Kafka topic, resumable from a checkpoint's position.

    Iterate it for observations, or call `batches()` for one list of `Message`s per
    poll. Both stop after `idle_timeout` seconds without a message (None: run until
    `stop()`). The position advances as messages are handed out, so a checkpoint taken
    after they are learned holds exactly what was learned. `share=(rank, workers)`
    reads the partitions p with p % workers == rank, assigned without a rebalance.

    >>> source = KafkaSource("events", bootstrap_servers="localhost:9092", decoder="yaml")
    Traceback (most recent call last):
    ...
    ValueError: unknown message format 'yaml'; expected one of ['json', 'msgpack']
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str = "localhost:9092",
        group_id: str = "stream-mtl",
        decoder: str | Decoder = "json",
        api_version: tuple[int, ...] | None = None,
        dead_letter_topic: str | None = None,
        max_poll_records: int = 500,
        poll_timeout: float = 0.5,
        idle_timeout: float | None = None,
        keep_dead_letters: int = 100,
        max_message_bytes: int = 1_000_000,
        share: tuple[int, int] | None = None,
        **consumer_config: typing.Any,
    ) -> None:
        if share is not None and not (
            len(share) == 2 and all(isinstance(n, int) for n in share) and 0 <= share[0] < share[1]
        ):
            raise InvalidInput(
                f"share must be (rank, workers) with 0 <= rank < workers, got {share!r}"
            )
        if not isinstance(max_message_bytes, int) or max_message_bytes < 1:
            raise InvalidInput(
                f"max_message_bytes must be a positive integer, got {max_message_bytes!r}"
            )
        self.topic = topic
        self.decode = codec(decoder, DECODERS)
        self.group_id = group_id
        self.max_poll_records = max_poll_records
        self.poll_timeout = poll_timeout
        self.idle_timeout = idle_timeout
        self.keep_dead_letters = keep_dead_letters
        self.max_message_bytes = max_message_bytes
        self.rejected = ReasonCounts()  # set-aside messages by reason, bounded
        self.dead_letters: collections.deque = collections.deque(maxlen=keep_dead_letters)
        self.n_consumed = 0
        self.n_commit_failures = 0
        self.n_rejoins_asked = 0  # stalled rejoins asked for again (`_rejoin_if_stalled`)
        self._unsent: Position | None = None  # a commit the broker did not take
        self.on_revoke: Callable[[set[TopicPartition]], None] | None = None
        self._next: dict[int, int] = {}
        self._start_at: Position = {}
        self._newly_assigned: set[TopicPartition] = set()
        self._revoked_partitions: set[int] = set()  # partitions revoked, the rejoin not yet done
        self._stopping = False
        config = {
            "auto_offset_reset": "earliest",
            "max_poll_records": max_poll_records,
            # A fetch holds a whole message (with its framing) of the largest size read.
            "max_partition_fetch_bytes": max(max_message_bytes + FRAMING_BYTES, 1_048_576),
            **consumer_config,
            "enable_auto_commit": False,
        }
        self._fetch_bytes = config["max_partition_fetch_bytes"]
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            api_version=api_version,
            **config,
        )
        try:
            if api_version is not None:  # kafka-python connects at once only to detect it
                wait_for_broker(bootstrap_servers, self._consumer.config["bootstrap_timeout_ms"])
            self._dead_letter_sink = (
                KafkaSink(dead_letter_topic, bootstrap_servers, api_version=api_version)
                if dead_letter_topic
                else None
            )
        except BaseException:
            self._consumer.close(autocommit=False)
            raise
        self.share = share
        self.n_partitions: int | None = None  # the topic's, with a share
        if share is None:
            self._consumer.subscribe([topic], listener=_Rebalance(self))
        else:
            self._assign_share(*share)

    def __repr__(self) -> str:
        return f"KafkaSource({self.topic!r}, group_id={self.group_id!r})"

    def _assign_share(self, rank: int, workers: int) -> None:
        """Own the partitions p with p % workers == rank, assigned directly: no group
        rebalance ever moves them (the group only keeps their committed offsets)."""
        timeout = self._consumer.config["request_timeout_ms"] / 1000
        deadline = time.monotonic() + timeout
        partitions = self._consumer.partitions_for_topic(self.topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            self.close()
            raise InvalidInput(f"topic {self.topic!r} has no partitions after {timeout:g} s")
        self.n_partitions = len(partitions)
        mine = sorted(p for p in partitions if p % workers == rank)
        if not mine:
            logger.warning(
                "worker %d of %d owns no partition: topic %r has %d",
                rank,
                workers,
                self.topic,
                len(partitions),
            )
        assigned = {TopicPartition(self.topic, p) for p in mine}
        self._consumer.assign(list(assigned))
        self._newly_assigned = set(assigned)
        logger.info("worker %d of %d owns partitions %s", rank, workers, mine)

    @property
    def partitions(self) -> list[int]:
        """The partitions this source reads now."""
        return sorted(tp.partition for tp in self._consumer.assignment())

    # -- positions ---------------------------------------------------------------------

    @property
    def position(self) -> Position:
        """The next offset to read in each owned partition: what a checkpoint stores."""
        return {str(partition): offset for partition, offset in sorted(self._next.items())}

    def seek(self, position: Position) -> None:
        """Start each partition at `position` when it is assigned (unless the group has
        committed a later offset, written by another member after this position)."""
        self._start_at = {str(p): int(offset) for p, offset in position.items()}
        # Until a partition is assigned, the position to checkpoint is the one sought.
        self._next.update({int(p): offset for p, offset in self._start_at.items()})
        self._newly_assigned |= self._consumer.assignment()

    def commit(self, position: Position | None = None, wait: bool = True) -> bool:
        """Commit `position` (default: the current one) for the partitions still owned;
        `wait=False` sends the commit without waiting for the broker's answer. Whether
        it was committed (or sent).

        Partitions revoked in a rebalance still under way are not owned. A commit that
        fails is logged and counted (`n_commit_failures`), not raised: the group refused
        it (this member was rejoining or had left it), or the broker did not take it
        within `request_timeout_ms`. The caller's checkpoint still holds the position. A
        commit the broker did not take is sent again before each poll until one is taken,
        or the partitions are revoked (then the owner commits afresh); one the group
        refused is not."""
        position = self.position if position is None else position
        # kafka-python holds revoked partitions in the assignment until the rejoin ends
        owned = {tp.partition for tp in self._consumer.assignment()} - self._revoked_partitions
        offsets = {
            TopicPartition(self.topic, int(p)): OffsetAndMetadata(offset, "", -1)
            for p, offset in position.items()
            if int(p) in owned
        }
        self._unsent = None
        if not offsets:
            return True
        if not wait:
            self._consumer.commit_async(offsets)
            return True
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as error:
            # This member left the group (or is rejoining it) since the poll: the
            # partitions are not its to commit; their next owner starts at the last
            # commit the group accepted.
            logger.warning("the group refused a commit of %s: %s", position, error)
        except KafkaError as error:
            logger.warning("a commit of %s failed (%s: %s)", position, type(error).__name__, error)
            self._unsent = position
        else:
            return True
        self.n_commit_failures += 1
        return False

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        # Called on kafka-python's IO thread, where nothing may block: the start offsets
        # are settled after the poll returns (`_settle_assignment`).
        logger.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self._newly_assigned |= assigned
        self._revoked_partitions -= {tp.partition for tp in assigned}

    def _revoked(self, revoked: set[TopicPartition], lost: bool) -> None:
        if not revoked:  # the first join
            return
        logger.info(
            "%s partitions %s",
            "lost" if lost else "revoked",
            sorted(tp.partition for tp in revoked),
        )
        if not lost and self.on_revoke is not None:
            self.on_revoke(revoked)
        self._revoked_partitions |= {tp.partition for tp in revoked}
        self._unsent = None  # another member may commit these partitions from now on
        for tp in revoked:
            # Assigned back, it goes on from here unless the group committed a later offset
            # meanwhile (`_settle_assignment`): its committed offset may be older (lost
            # partitions commit nothing; a revoke's commit may not have landed yet).
            left_at = self._next.pop(tp.partition, None)
            if left_at is not None:
                key = str(tp.partition)
                self._start_at[key] = max(self._start_at.get(key, 0), left_at)
        self._newly_assigned -= revoked

    def _settle_assignment(self, records: dict) -> None:
        """Start newly assigned partitions at the later of the checkpoint's position and
        the group's committed offset; records fetched from before that are read again."""
        assigned, self._newly_assigned = self._newly_assigned, set()
        owned = self._consumer.assignment()
        for tp in assigned & owned:
            wanted = self._start_at.get(str(tp.partition))
            committed = self._consumer.committed(tp)
            if wanted is not None and (committed is None or wanted > committed):
                self._consumer.seek(tp, wanted)
                self._next[tp.partition] = wanted
                records.pop(tp, None)
            elif committed is not None:
                self._next[tp.partition] = committed
                if wanted is not None and wanted < committed:
                    logger.info(
                        "partition %d: the group committed %d, later than the checkpoint's "
                        "%d; starting at %d",
                        tp.partition,
                        committed,
                        wanted,
                        committed,
                    )

    # -- consuming ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[Observation]:
        for batch in self.batches():
            for message in batch:
                yield message.observation

    def batches(self) -> Iterator[list[Message]]:
        """One list of well-formed messages per poll; malformed ones are set aside.

        An empty list means a poll found nothing new to learn: the caller may checkpoint
        or log.
        """
        idle_since = time.monotonic()
        while not self._stopping:
            if self._unsent is not None:
                self.commit(self._unsent)
            try:
                records = self._consumer.poll(
                    timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_poll_records
                )
            except RecordTooLargeError as error:  # brokers before 0.10.1 cannot return it
                self._skip_too_large(error.args[1])
                yield []
                continue
            self._rejoin_if_stalled()
            if self._newly_assigned:
                self._settle_assignment(records)
            batch = [self._read(record) for part in records.values() for record in part]
            batch = [message for message in batch if message is not None]
            if records:
                idle_since = time.monotonic()
            elif (
                self.idle_timeout is not None and time.monotonic() - idle_since >= self.idle_timeout
            ):
                return
            yield batch

    def _rejoin_if_stalled(self) -> None:
        """Ask kafka-python to rejoin the group if a poll left this member's rejoin
        stalled: its state still "rebalancing" while it no longer asks for a rejoin, so
        that no later poll would finish one, and the member would hold no partitions and
        stop heartbeating for good. kafka-python 3.0.12 ended a poll so in this
        project's tests, under short polls on a busy machine, after a rebalance that
        waited for another member; in the correct course "rebalancing" lasts only while
        a rejoin is asked for. The next poll then completes the join under way or
        starts one. Counted in `n_rejoins_asked`."""
        coordinator = self._consumer._coordinator
        if coordinator.rebalance_in_progress() and not coordinator.need_rejoin():
            logger.warning("this member's rejoin of the group had stalled: asking again")
            self.n_rejoins_asked += 1
            coordinator.request_rejoin()

    def _read(self, record: typing.Any) -> Message | None:
        """The message a record holds, or None once it is set aside: whatever its bytes,
        a record leaves here as one or the other."""
        self.n_consumed += 1
        self._next[record.partition] = record.offset + 1
        value = record.value or b""
        try:
            if len(value) > self.max_message_bytes:
                raise MalformedMessage(
                    f"a message of {len(value):,} bytes; at most {self.max_message_bytes:,} "
                    "are read (max_message_bytes)",
                    reason="a message larger than max_message_bytes",
                )
            obs = observation_from_message(self.decode(value), _text(record.key))
        except Exception as error:  # a decoder's own errors too: never stop on one record
            if not isinstance(error, InvalidInput):
                error = MalformedMessage(
                    f"the decoder raised {type(error).__name__}: {str(error)[:300]}",
                    reason=f"the decoder raised {type(error).__name__}",
                )
            self.set_aside(error, record.partition, record.offset, record.key, value)
            return None
        return Message(obs, record.partition, record.offset, record.key, value)

    def _skip_too_large(self, offsets: dict[TopicPartition, int]) -> None:
        """Set aside (without its bytes, which the broker will not hand over) each message
        too large to fetch, and go on after it."""
        for tp, offset in offsets.items():
            self.n_consumed += 1
            error = MalformedMessage(
                f"a message larger than the fetch size of {self._fetch_bytes:,} bytes "
                "(max_message_bytes); its bytes are not kept",
                reason="a message larger than max_message_bytes",
            )
            self.set_aside(error, tp.partition, offset, None, b"")
            self._consumer.seek(tp, offset + 1)
            self._next[tp.partition] = offset + 1

    def set_aside(
        self, error: InvalidInput, partition: int, offset: int, key: bytes | None, value: bytes
    ) -> None:
        """Count a refused message by `error.reason` (so that messages refused for the same
        cause share a count) and send it to the dead-letter topic with the error's text."""
        self.rejected.add(error.reason)
        reason = str(error)
        record = dead_letter(reason, self.topic, partition, offset, key, value or b"")
        self.dead_letters.append(record)
        if self._dead_letter_sink is not None:
            self._dead_letter_sink.send(key, record)
        logger.debug("set aside partition %d offset %d: %s", partition, offset, reason)

    def flush(self) -> None:
        """Make the dead letters sent so far durable (before offsets are committed)."""
        if self._dead_letter_sink is not None:
            self._dead_letter_sink.flush()

    def stop(self) -> None:
        """Make `batches()` return after the current poll (safe from a signal handler)."""
        self._stopping = True

    def close(self) -> None:
        """Flush the dead letters and leave the group, committing nothing more."""
        self.on_revoke = None  # leaving the group revokes: the owner has checkpointed already
        self.flush()
        if self._dead_letter_sink is not None:
            self._dead_letter_sink.close()
        self._consumer.close(autocommit=False)


def _text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return base64.b64encode(key).decode()
