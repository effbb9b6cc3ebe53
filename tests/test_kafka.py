"""The Kafka path against a real broker: exactly once, restarts, dead letters, predictions.

The broker is a real Apache Kafka 0.9 (tests/kafka_broker.py), or the one named by
KAFKA_BOOTSTRAP_SERVERS. Each test uses its own topics and consumer group.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.base import MemberState
from kafka.structs import TopicPartition

from stream_mtl import Binary, MultiTaskLearner, Regression
from stream_mtl.connectors.kafka import KafkaSink, KafkaSource
from stream_mtl.connectors.learning_loop import LearningLoop
from stream_mtl.connectors.messages import encode_json, encode_msgpack, message_from_observation
from stream_mtl.connectors.synthetic import SyntheticStream

pytestmark = [pytest.mark.integration]

TASKS = {"a": "regression", "flag": "binary"}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def synthetic_messages(n: int, seed: int = 0) -> list[dict]:
    stream = SyntheticStream(tasks=TASKS, n_features=6, n=n, seed=seed)
    return [message_from_observation(obs) for obs in stream]


def produce(kafka, topic: str, values: list[bytes], keys: list[str] | None = None) -> list:
    """Send `values` (keys round-robin over partitions by key hash); their (partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, api_version=kafka.api_version)
    keys = keys or [f"k{i}" for i in range(len(values))]
    futures = [producer.send(topic, value=v, key=k.encode()) for k, v in zip(keys, values)]
    producer.flush()
    placed = [(meta.partition, meta.offset) for meta in (f.get(30) for f in futures)]
    producer.close()
    return placed


def drain(kafka, topic: str, expected: int, seconds: float = 60.0) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        api_version=kafka.api_version,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=unique("reader"),
    )
    records, deadline = [], time.monotonic() + seconds
    while len(records) < expected and time.monotonic() < deadline:
        for part in consumer.poll(500).values():
            records.extend(part)
    time.sleep(0.5)  # anything beyond what was expected
    for part in consumer.poll(500).values():
        records.extend(part)
    consumer.close()
    return records


def committed(kafka, topic: str, group: str, partitions: int) -> dict[str, int]:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap, api_version=kafka.api_version, group_id=group
    )
    found = {}
    for p in range(partitions):
        offset = consumer.committed(TopicPartition(topic, p))
        if offset is not None:
            found[str(p)] = offset
    consumer.close()
    return found


def end_offsets(placed: list) -> dict[str, int]:
    ends: dict[str, int] = {}
    for partition, offset in placed:
        ends[str(partition)] = max(ends.get(str(partition), 0), offset + 1)
    return ends


def new_model(backend: str = "numpy") -> MultiTaskLearner:
    return MultiTaskLearner(
        tasks={"a": Regression(), "flag": Binary()}, hidden=(16,), backend=backend, seed=0
    )


def source_for(kafka, topic: str, group: str, **options) -> KafkaSource:
    return KafkaSource(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        api_version=kafka.api_version,
        idle_timeout=options.pop("idle_timeout", 3.0),
        **options,
    )


def test_every_message_is_learned_exactly_once_in_batches(kafka, tmp_path):
    topic, group = unique("events"), unique("group")
    kafka.create_topic(topic, partitions=3)
    messages = synthetic_messages(20_000)
    placed = produce(kafka, topic, [encode_json(m) for m in messages])
    seen: list[tuple[int, int]] = []
    frozen: list[int] = []  # objects the collector skipped while each batch was learned

    def learned(batch) -> None:
        seen.extend((m.partition, m.offset) for m in batch)
        frozen.append(gc.get_freeze_count())

    loop = LearningLoop(
        new_model("torch"),
        source_for(kafka, topic, group),
        tmp_path / "model.ckpt",
        checkpoint_every=3000,
        on_learned=learned,
    )
    assert loop.batch_learning
    loop.run()

    assert min(frozen) > 0 and gc.get_freeze_count() == 0  # frozen_heap: for the run only
    assert len(seen) == len(set(seen)) == 20_000
    assert set(seen) == set(placed)
    assert loop.model.n_learned == {"a": 20_000, "flag": 20_000}
    model, extra = MultiTaskLearner.load_with_extra(tmp_path / "model.ckpt")
    assert extra["position"] == end_offsets(placed) == committed(kafka, topic, group, 3)
    assert model.n_learned == {"a": 20_000, "flag": 20_000}
    assert loop.n_checkpoints >= 6


def test_msgpack_messages_are_decoded(kafka, tmp_path):
    topic, group = unique("packed"), unique("group")
    kafka.create_topic(topic)
    produce(kafka, topic, [encode_msgpack(m) for m in synthetic_messages(300)])
    loop = LearningLoop(
        new_model(), source_for(kafka, topic, group, decoder="msgpack"), tmp_path / "m.ckpt"
    )
    loop.run()
    assert loop.model.n_learned == {"a": 300, "flag": 300}


def malformed(kind: str, message: dict) -> bytes:
    if kind == "bad JSON":
        return b'{"x": {"x0": 1.0'
    if kind == "NaN feature":
        return json.dumps({"x": {**message["x"], "x0": float("nan")}, "y": message["y"]}).encode()
    if kind == "unknown task":
        return encode_json({"x": message["x"], "y": {**message["y"], "margin": 1.0}})
    if kind == "wrong label type":
        return encode_json({"x": message["x"], "y": {**message["y"], "a": "high"}})
    raise AssertionError(kind)


REASONS = {
    "bad JSON": "not valid JSON",
    "NaN feature": "feature 'x0' is NaN",
    "unknown task": "unknown task 'margin'",
    "wrong label type": "label 'high' for regression task 'a'",
}


def test_malformed_messages_go_to_the_dead_letter_topic_with_their_reason(kafka, tmp_path):
    topic, dead, group = unique("dirty"), unique("dead"), unique("group")
    kafka.create_topic(topic, partitions=2)
    kafka.create_topic(dead)
    rng = random.Random(0)
    messages = synthetic_messages(5000)
    bad = dict(zip(sorted(rng.sample(range(5000), 50)), list(REASONS) * 13))
    values = [malformed(bad[i], m) if i in bad else encode_json(m) for i, m in enumerate(messages)]
    placed = produce(kafka, topic, values)
    loop = LearningLoop(
        new_model("torch"),
        source_for(kafka, topic, group, dead_letter_topic=dead),
        tmp_path / "m.ckpt",
        checkpoint_every=1000,
    )
    loop.run()

    assert loop.model.n_learned == {"a": 4950, "flag": 4950}
    letters = [json.loads(record.value) for record in drain(kafka, dead, 50)]
    assert len(letters) == 50
    by_place = {(letter["partition"], letter["offset"]): letter for letter in letters}
    for i, kind in bad.items():
        letter = by_place[placed[i]]
        assert REASONS[kind] in letter["reason"], (kind, letter["reason"])
        assert letter["topic"] == topic and letter["key"] == f"k{i}"
        assert letter["value"] == values[i].decode()
    assert sum(loop.source.rejected.values()) == 50


POISONS = {
    b'{"x": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001: "nested too deeply",
    b'{"x": {"x0": ' + b"9" * 401 + b'}, "y": {"a": 1.0}}': "an integer too large for a float",
    b'{"x": {"x0": 1.0}, "y": {"a": ' + b"9" * 401 + b"}}": "an integer too large for a float",
    b'{"x": {"x0": 1.0}, "key": [1, {"b": 2}]}': '"key" must be a string',
    b'{"x": {"x0": 1.0, "boom": 1.0}, "y": {"a": 1.0}}': "the model raised RuntimeError: boom",
    b'{"x": {"x0": "' + b"z" * 200_000 + b'"}}': "larger than the fetch size of 150,000 bytes",
}


def test_a_poison_message_is_a_dead_letter_and_never_stops_the_loop(kafka, tmp_path):
    topic, dead, group = unique("poison"), unique("dead"), unique("group")
    kafka.create_topic(topic)
    kafka.create_topic(dead)
    good = [encode_json(m) for m in synthetic_messages(60)]
    values = good[:10] + list(POISONS) + good[10:]
    placed = produce(kafka, topic, values)

    def new_loop():
        model = new_model("torch")
        predict_one, predict_many = model.predict_one, model.predict_many

        def faulty(predict):  # a fault of the model's on one message
            def predict_or_raise(x):
                if "boom" in (x.columns if hasattr(x, "columns") else x):
                    raise RuntimeError("boom")
                return predict(x)

            return predict_or_raise

        model.predict_one, model.predict_many = faulty(predict_one), faulty(predict_many)
        # A fetch smaller than the largest message: a 0.9 broker cannot hand it over.
        source = source_for(
            kafka,
            topic,
            group,
            dead_letter_topic=dead,
            max_message_bytes=150_000,
            max_partition_fetch_bytes=150_000,
        )
        return LearningLoop(model, source, tmp_path / "m.ckpt")

    loop = new_loop()
    loop.run()
    assert loop.model.n_learned == {"a": 60, "flag": 60}
    letters = [json.loads(record.value) for record in drain(kafka, dead, len(POISONS))]
    reasons = {letter["offset"]: letter["reason"] for letter in letters}
    assert len(letters) == len(POISONS)
    for offset, expected in enumerate(POISONS.values(), start=10):
        assert expected in reasons[offset], (offset, reasons[offset])
    _, extra = MultiTaskLearner.load_with_extra(tmp_path / "m.ckpt")
    assert extra["position"] == end_offsets(placed)
    again = LearningLoop.resume_or_start(  # goes on after the poison: nothing read twice
        tmp_path / "m.ckpt", new_model, source_for(kafka, topic, group)
    )
    again.run()
    assert again.source.n_consumed == 0 and again.model.n_learned == {"a": 60, "flag": 60}
    assert dict(again.source.rejected) == dict(loop.source.rejected)  # counts go on too
    assert sum(again.source.rejected.values()) == len(POISONS)


def test_predictions_land_on_the_output_topic_with_their_keys(kafka, tmp_path):
    topic, out, group = unique("split"), unique("predictions"), unique("group")
    kafka.create_topic(topic)
    kafka.create_topic(out)
    messages = synthetic_messages(400)
    values, keys = [], []
    for i, m in enumerate(messages):  # features now, their labels 25 messages later
        values.append(encode_json({"x": m["x"], "key": f"order-{i}"}))
        keys.append(f"order-{i}")
        if i >= 25:
            values.append(encode_json({"y": messages[i - 25]["y"], "key": f"order-{i - 25}"}))
            keys.append(f"order-{i - 25}")
    produce(kafka, topic, values, keys)
    sink = KafkaSink(out, kafka.bootstrap, api_version=kafka.api_version)
    loop = LearningLoop(new_model(), source_for(kafka, topic, group), tmp_path / "m", sink=sink)
    loop.run()

    records = drain(kafka, out, 400)
    assert len(records) == 400
    assert [r.key.decode() for r in records] == [f"order-{i}" for i in range(400)]
    first = json.loads(records[0].value)
    assert first["key"] == "order-0" and set(first["prediction"]) == {"a", "flag"}
    assert loop.model.n_learned == {"a": 375, "flag": 375}
    assert len(loop.step.pending) == 25  # the last features, still waiting for labels
    _, extra = MultiTaskLearner.load_with_extra(tmp_path / "m")
    assert len(extra["pending"]["held"]) == 25


def test_labels_for_a_key_never_seen_are_set_aside(kafka, tmp_path):
    topic, group = unique("orphans"), unique("group")
    kafka.create_topic(topic)
    produce(kafka, topic, [encode_json({"y": {"a": 1.0}, "key": "nobody"})])
    loop = LearningLoop(new_model(), source_for(kafka, topic, group), tmp_path / "m")
    loop.run()
    assert loop.source.dead_letters[0]["reason"].startswith("no features are held under key")


def run_command(kafka, topic: str, group: str, checkpoint: Path, *options: str):
    command = [
        sys.executable,
        "-m",
        "stream_mtl.cli",
        "run",
        "--source",
        f"kafka://{kafka.bootstrap}/{topic}",
        "--group",
        group,
        "--task",
        "a:regression",
        "--task",
        "flag:binary",
        "--hidden",
        "16",
        "--checkpoint",
        str(checkpoint),
        "--log-every",
        "1",
        "--session-timeout",
        "6",
        *options,
    ]
    if kafka.api_version:
        command += ["--api-version", ".".join(map(str, kafka.api_version))]
    log = (checkpoint.parent / f"run-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def assert_learned_exactly_once(checkpoint: Path, messages: list, ends: dict) -> dict:
    """The final checkpoint holds every message of every partition, learned once; its
    extra data, for more checks."""
    model, extra = MultiTaskLearner.load_with_extra(checkpoint)
    assert extra["position"] == ends
    assert extra["learned"] == ends  # every message of every partition, once
    assert model.n_learned == {"a": len(messages), "flag": len(messages)}
    # The running mean of the regression targets is a fingerprint of which labels were
    # learned: one lost and one learned twice would move it.
    targets = np.array([m["y"]["a"] for m in messages])
    assert model._outputs.scale.mean[0] == pytest.approx(targets.mean(), rel=1e-9)
    return extra


def test_a_consumer_killed_at_a_random_point_resumes_and_learns_each_message_once(kafka, tmp_path):
    topic, group = unique("crash"), unique("group")
    kafka.create_topic(topic, partitions=3)
    messages = synthetic_messages(20_000, seed=1)
    placed = produce(kafka, topic, [encode_json(m) for m in messages])
    checkpoint = tmp_path / "model.ckpt"

    first = run_command(kafka, topic, group, checkpoint, "--checkpoint-every", "700")
    wait_for(checkpoint.exists, 60, "the first checkpoint")
    time.sleep(random.Random(7).uniform(0.2, 2.0))
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    _, at_kill = MultiTaskLearner.load_with_extra(checkpoint)
    assert sum(at_kill["position"].values()) < 20_000, "killed too late to test a restart"

    ends = end_offsets(placed)
    second = run_command(kafka, topic, group, checkpoint, "--checkpoint-every", "700")
    wait_for(lambda: committed(kafka, topic, group, 3) == ends, 120, "the topic to be drained")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0

    assert_learned_exactly_once(checkpoint, messages, ends)


def test_sigterm_leaves_a_checkpoint_and_committed_offsets_that_agree(kafka, tmp_path):
    topic, group = unique("term"), unique("group")
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, [encode_json(m) for m in synthetic_messages(20_000, seed=2)])
    checkpoint = tmp_path / "model.ckpt"
    process = run_command(kafka, topic, group, checkpoint, "--checkpoint-every", "100000")
    log = max(tmp_path.glob("run-*.log"))
    wait_for(lambda: "consumed" in log.read_text(), 60, "the consumer to start learning")
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0

    model, extra = MultiTaskLearner.load_with_extra(checkpoint)
    assert extra["position"] == committed(kafka, topic, group, 2)
    learned = sum(extra["position"].values())
    assert 0 < learned < 20_000
    assert model.n_learned == {"a": learned, "flag": learned}
    assert "SIGTERM: checkpointing and stopping" in log.read_text()


@pytest.mark.parametrize("version", [[], ["--api-version", "0.9"]], ids=["detected", "given"])
def test_a_missing_broker_is_a_clear_error(tmp_path, version):
    """Also when the version is given, so that nothing connects to ask it (that waited
    for a broker forever)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_mtl.cli",
            "run",
            "--source",
            "kafka://127.0.0.1:9/events",
            "--task",
            "a:regression",
            "--checkpoint",
            str(tmp_path / "m"),
            "--connect-timeout",
            "2",
            *version,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 2
    assert "no Kafka broker answers at 127.0.0.1:9" in done.stderr


def test_partitions_handed_to_a_new_group_member_are_learned_once_overall(kafka, tmp_path):
    import threading

    topic, group = unique("shared"), unique("group")
    kafka.create_topic(topic, partitions=4)
    placed = produce(kafka, topic, [encode_json(m) for m in synthetic_messages(16_000, seed=3)])
    seen: dict[str, list] = {"first": [], "second": []}
    loops = {
        name: LearningLoop(
            new_model(),
            source_for(
                kafka,
                topic,
                group,
                idle_timeout=4.0,
                max_poll_records=100,
                session_timeout_ms=6000,
                heartbeat_interval_ms=300,  # the first member hears of the second soon
            ),
            tmp_path / f"{name}.ckpt",
            checkpoint_every=500,
            on_learned=lambda batch, name=name: seen[name].extend(
                (m.partition, m.offset) for m in batch
            ),
        )
        for name in seen
    }
    first = threading.Thread(target=loops["first"].run)
    first.start()
    wait_for(lambda: len(seen["first"]) > 500, 60, "the first member to learn")
    second = threading.Thread(target=loops["second"].run)
    second.start()
    first.join(120)
    second.join(120)

    learned = seen["first"] + seen["second"]
    assert seen["second"], "the rebalance gave the second member nothing"
    assert len(learned) == len(set(learned)) == 16_000
    assert set(learned) == set(placed)


def test_a_commit_while_the_group_rebalances_is_no_error(kafka):
    """A poll may return while this member's rejoin is still under way (its partitions
    revoked, the group waiting for another member): a commit of a position checkpointed
    before then must not raise (it stopped a service's close, and would stop a loop);
    what it holds for revoked partitions is not this member's to commit any more. Once
    partitions are assigned again, commits go through."""
    import threading

    topic, group = unique("rebalancing"), unique("group")
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, [encode_json(m) for m in synthetic_messages(40, seed=1)])
    timing = dict(session_timeout_ms=6000, heartbeat_interval_ms=200)
    source = source_for(kafka, topic, group, poll_timeout=0.2, idle_timeout=None, **timing)
    revoked: list[set] = []
    source.on_revoke = revoked.append  # for partitions held (not at the first join)
    batches = source.batches()

    def poll_until(condition, what: str) -> None:
        deadline = time.monotonic() + 60
        coordinator = source._consumer._coordinator
        while not condition():
            assert time.monotonic() < deadline, (
                f"no {what} in 60 s: state {coordinator.state}, generation "
                f"{coordinator.group_metadata()}, rejoin needed {coordinator.need_rejoin()}"
            )
            next(batches)

    poll_until(lambda: source.n_consumed == 40, "messages")
    source.commit()  # where a partition assigned again starts

    done = threading.Event()

    def join(consumer: KafkaConsumer, joined: threading.Event, idle: bool) -> None:
        """Poll until assigned; then stop (`idle`) or go on until the test is done, so
        that the member never leaves the group for want of polls: kafka-python's
        heartbeat thread makes one that stops polling leave after its poll interval,
        which begins another rebalance (a failed run logged that warning; its cause
        was the stalled rejoin of the test below)."""
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(200)
        joined.set()
        while not idle and not done.is_set():
            consumer.poll(200)

    def member(idle: bool = False, **options) -> tuple:
        """Another member, made and polled on a thread of its own. Made there too: this
        member must go on polling meanwhile, since a 0.9 broker's poll interval is the
        session timeout (6 s here), past which kafka-python's heartbeat thread leaves
        the group and the partitions are lost, not revoked (a failed run on a busy
        machine: "Consumer poll timeout has expired", no second revoke in 60 s)."""
        made: list[KafkaConsumer] = []
        joined = threading.Event()

        def make_and_join() -> None:
            made.append(
                KafkaConsumer(
                    topic,
                    bootstrap_servers=kafka.bootstrap,
                    api_version=kafka.api_version,
                    group_id=group,
                    **{**timing, **options},
                )
            )
            join(made[0], joined, idle)

        thread = threading.Thread(target=make_and_join, daemon=True)
        thread.start()
        return made, joined, thread

    # Joins, then stops polling: the next rebalance waits for it until it leaves the
    # group, its session timeout after its last poll (the 0.9 protocol has no separate
    # poll interval). Long: at 6 s, a busy machine let it leave before the next
    # rebalance began, which then ended at once.
    idle, joined, _ = member(idle=True, session_timeout_ms=25_000)
    poll_until(joined.is_set, "first rebalance")
    assert len(revoked) == 1, "the group never rebalanced"
    held = source.position  # what a checkpoint taken now would hold
    last, _, polling = member()  # its rebalance waits for the idle member
    poll_until(lambda: len(revoked) == 2, "second rebalance")
    assert source._consumer._coordinator.rebalance_in_progress(), "the rejoin ended too soon"

    assert held and not source.position
    source.commit(held)  # a checkpoint's, committed late: raised RebalanceInProgressError

    idle[0].close()  # the rebalance completes without it
    poll_until(source._consumer._coordinator.generation_if_stable, "end to the rebalance")
    owned = {str(tp.partition) for tp in source._consumer.assignment()}
    assert owned, "the rebalance gave this member nothing"
    source.commit({p: 1 for p in owned})
    assert committed(kafka, topic, group, 2).items() >= {p: 1 for p in owned}.items()
    source.close()
    done.set()
    polling.join()
    last[0].close()


def test_a_member_whose_rejoin_stalled_rejoins(kafka):
    """kafka-python 3.0.12 once left a poll with this member "rebalancing" while asking
    for no rejoin (the failure of the test above, on a busy machine): no later poll
    would rejoin, and the member would hold nothing. Put a real member in that state:
    the next polls rejoin, and it consumes again."""
    topic, group = unique("stalled"), unique("group")
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, [encode_json(m) for m in synthetic_messages(40, seed=1)])
    source = source_for(kafka, topic, group, poll_timeout=0.2, idle_timeout=None)
    batches = source.batches()
    deadline = time.monotonic() + 60
    while source.n_consumed < 20:
        assert time.monotonic() < deadline, "nothing consumed in 60 s"
        next(batches)
    coordinator = source._consumer._coordinator
    with coordinator._lock:  # the state the poll was left in
        coordinator.state = MemberState.REBALANCING
        coordinator.rejoin_needed = False
    while not coordinator.generation_if_stable() or source.n_consumed < 40:
        assert time.monotonic() < deadline, f"stuck: state {coordinator.state}"
        next(batches)
    assert source.n_rejoins_asked == 1
    assert source._consumer.assignment()
    source.close()


def test_partitions_lost_and_assigned_back_go_on_where_this_member_was(kafka, caplog):
    """A member that stalls past the poll interval (a first compile, a long checkpoint)
    loses its partitions; when the group hands them back, it goes on from where it was,
    not from the group's older committed offset: nothing it handed out comes again."""
    topic, group = unique("stall"), unique("group")
    kafka.create_topic(topic, partitions=2)
    placed = produce(kafka, topic, [encode_json(m) for m in synthetic_messages(400, seed=4)])
    source = source_for(
        kafka,
        topic,
        group,
        max_poll_records=50,
        session_timeout_ms=6000,
        max_poll_interval_ms=6000,  # a 0.9 broker has no other: kafka-python insists
        heartbeat_interval_ms=500,
        idle_timeout=4.0,
    )
    caplog.set_level("INFO", logger="stream_mtl.connectors.kafka")
    seen: list[tuple[int, int]] = []
    batches = source.batches()
    while len(seen) < 100:
        seen.extend((m.partition, m.offset) for m in next(batches))
    # No poll for longer than the poll interval while heartbeats go on: kafka-python's
    # heartbeat thread leaves the group, and the partitions are lost, not revoked. (A
    # stall that holds the GIL past the session timeout, as a compile does, races between
    # the two: the member may be told it is gone, or rejoin and revoke; CI saw both.)
    time.sleep(8)
    for batch in batches:
        seen.extend((m.partition, m.offset) for m in batch)
    source.close()
    lost = [r for r in caplog.records if r.getMessage().startswith("lost partitions")]
    assert lost, "the member never lost its partitions: the test misses its case"
    assert len(seen) == len(set(seen)) == 400
    assert set(seen) == set(placed)


def check_a_failed_commit_is_sent_again(kafka, make_loop) -> None:
    """Run `make_loop(topic, group, on_learned)` on a thread over 100 messages; the broker
    stops answering as the last of them is learned, so the checkpoint after it is
    written but its commit times out. Nothing new comes: the loop must send that commit
    again, and the group end at the last message once the broker answers."""
    if not hasattr(kafka, "frozen"):
        pytest.skip("an external broker cannot be paused")
    topic, group = unique("recommit"), unique("group")
    kafka.create_topic(topic)
    messages = synthetic_messages(100, seed=13)
    placed = produce(kafka, topic, [encode_json(m) for m in messages])
    frozen = kafka.frozen()
    learned: list = []

    def freeze_at_the_end(batch: list) -> None:
        learned.extend(batch)
        if len(learned) == len(messages):
            frozen.__enter__()  # the broker stops before this batch's checkpoint commits

    loop = make_loop(topic, group, freeze_at_the_end)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        try:
            wait_for(lambda: loop.source.n_commit_failures >= 1, 60, "a commit to fail")
            assert loop.n_checkpoints >= 1  # written before its commit failed
        finally:
            frozen.__exit__(None, None, None)
        wait_for(lambda: committed(kafka, topic, group, 1) == end_offsets(placed), 60, "the commit")
    finally:
        loop.stop()
        runner.join(60)
    assert not runner.is_alive()
    assert loop.model.n_learned == {"a": 100, "flag": 100}


def test_a_commit_that_failed_is_sent_again_when_nothing_new_comes(kafka, tmp_path):
    def make_loop(topic: str, group: str, on_learned) -> LearningLoop:
        source = source_for(kafka, topic, group, idle_timeout=None, request_timeout_ms=3000)
        return LearningLoop(
            new_model(), source, tmp_path / "model.ckpt", checkpoint_every=1, on_learned=on_learned
        )

    check_a_failed_commit_is_sent_again(kafka, make_loop)
