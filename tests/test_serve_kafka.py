"""`stream-mtl serve --source kafka://...`: a real server learning a real topic while it
serves, exactly once through a kill of its learner process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families
from serve_process import start_server, stop_server
from test_kafka import committed, drain, end_offsets, produce, synthetic_messages, unique

from stream_mtl import MultiTaskLearner
from stream_mtl.connectors.messages import encode_json

pytestmark = [pytest.mark.integration]


def kafka_options(kafka, topic: str, group: str) -> list[str]:
    options = ["--source", f"kafka://{kafka.bootstrap}/{topic}", "--group", group]
    # a killed learner's partitions come back once the group gives up on it
    options += ["--session-timeout", "6"]
    if kafka.api_version:
        options += ["--api-version", ".".join(map(str, kafka.api_version))]
    return options


def health(client: httpx.Client) -> dict:
    return client.get("/healthz").json()


def test_a_served_topic_is_learned_once_through_a_learner_kill(kafka, tmp_path):
    """Messages on a topic and labels posted over HTTP, learned side by side; kill -9 of
    the learner process at a random moment; the restarted learner goes on from the
    checkpoint's offsets: in the end every message is learned exactly once (the count
    and the running mean of its regression labels say so), the group's committed offsets
    are the checkpoint's, every 202 is learned, and bad messages are dead letters."""
    topic, group, dead = unique("served"), unique("group"), unique("dead")
    kafka.create_topic(topic, partitions=3)
    messages = synthetic_messages(4_000, seed=3)
    values = [encode_json(m) for m in messages]
    for at in (100, 1_500, 3_000):  # three that cannot be read
        values.insert(at, b"{not json")
    placed = produce(kafka, topic, values)
    ends = end_offsets(placed)
    path = tmp_path / "model.ckpt"
    options = [
        *("--hidden", "16", "--checkpoint-every", "500", "--dead-letter-topic", dead),
        *kafka_options(kafka, topic, group),
    ]
    process, url = start_server(path, "a:regression", "flag:binary", options=options)
    answers: list[int] = []
    stop = threading.Event()

    def post_flags() -> None:  # labels of the binary task only: task a stays the topic's
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=url, timeout=30) as poster:
            while not stop.is_set():
                x = {f"h{j}": float(v) for j, v in enumerate(rng.normal(size=3))}
                body = {"x": x, "y": {"flag": x["h0"] > 0}}
                answers.append(poster.post("/learn", json=body).status_code)
                time.sleep(0.005)

    poster = threading.Thread(target=post_flags)
    poster.start()
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 120
            while not path.exists() or health(client)["source"]["learned"] < 1_000:
                assert time.monotonic() < deadline, health(client)
                time.sleep(0.05)
            time.sleep(random.Random(11).uniform(0.0, 1.0))
            learner = health(client)["learner_pid"]
            os.kill(learner, signal.SIGKILL)
            _, at_kill = MultiTaskLearner.load_with_extra(path)
            assert sum(at_kill["feed"]["position"].values()) < len(values), "killed too late"
            while client.get("/healthz").status_code == 200:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert client.post("/predict", json={"x": {"x0": 1.0}}).status_code == 200
            while client.get("/healthz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert health(client)["learner_restarts"] == 1
            while committed(kafka, topic, group, 3) != ends:  # drained, checkpointed
                assert time.monotonic() < deadline, health(client)
                time.sleep(0.2)
            metrics = client.get("/metrics").text
    finally:
        stop.set()
        poster.join()
    assert stop_server(process)
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    progress = {s.labels["state"]: s.value for s in families["stream_mtl_source_messages"].samples}
    assert progress["learned"] == 4_000 and "set_aside" in progress  # learned: checkpointed too

    model, extra = MultiTaskLearner.load_with_extra(path)
    assert extra["feed"]["position"] == ends == committed(kafka, topic, group, 3)
    assert sum(extra["feed"]["learned"].values()) == 4_000
    assert model.n_learned["a"] == 4_000  # each message once: a is labelled by the topic only
    targets = np.array([m["y"]["a"] for m in messages])
    assert model._outputs.scale.mean[0] == pytest.approx(targets.mean(), rel=1e-9)
    acknowledged = answers.count(202)
    refused = len(answers) - acknowledged  # refused while the learner was down (503)
    assert set(answers) <= {202, 503} and refused > 0
    assert 4_000 + acknowledged <= model.n_learned["flag"] <= 4_000 + acknowledged + refused
    reasons = {letter.value for letter in drain(kafka, dead, 3)}
    assert len(reasons) >= 1 and all(b"not valid JSON" in r for r in reasons)


def test_serve_without_a_broker_is_a_clear_error(tmp_path):
    import socket

    from kafka_broker import free_port

    with socket.socket() as closed:  # bound, never listening: refused, and no one else's
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        command = [
            *(sys.executable, "-m", "stream_mtl.cli", "serve"),
            *("--checkpoint", str(tmp_path / "model.ckpt"), "--task", "a:regression"),
            *("--source", f"kafka://127.0.0.1:{port}/events", "--connect-timeout", "2"),
            *("--port", str(free_port())),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"stream-mtl: error: no Kafka broker answers at 127.0.0.1:{port}" in done.stderr


def test_a_service_resumed_from_its_checkpoint_learns_only_what_came_after(kafka, tmp_path):
    """The learner on a thread of this process (`OnlineModel(process=False, feed=...)`):
    closing checkpoints the topic's position and commits it; resumed from the checkpoint,
    the service learns the messages sent since, and none again."""
    from stream_mtl import Binary, Regression
    from stream_mtl.connectors.kafka_feed import KafkaFeed
    from stream_mtl.service import OnlineModel

    topic, group = unique("resumed"), unique("group")
    kafka.create_topic(topic, partitions=2)
    first, second = synthetic_messages(600, seed=4), synthetic_messages(400, seed=5)
    path = tmp_path / "model.ckpt"

    def feed() -> KafkaFeed:
        return KafkaFeed(
            topic, bootstrap_servers=kafka.bootstrap, api_version=kafka.api_version, group_id=group
        )

    def learned_from_topic(service: OnlineModel, count: int) -> None:
        deadline = time.monotonic() + 60
        while service.status()["source"]["learned"] < count:
            assert time.monotonic() < deadline, service.status()["source"]
            time.sleep(0.05)

    placed = produce(kafka, topic, [encode_json(m) for m in first])
    model = MultiTaskLearner(tasks={"a": Regression(), "flag": Binary()}, hidden=(8,), seed=0)
    service = OnlineModel(model, process=False, checkpoint=path, feed=feed())
    learned_from_topic(service, 600)
    service.close()
    _, extra = MultiTaskLearner.load_with_extra(path)
    assert extra["feed"]["position"] == end_offsets(placed) == committed(kafka, topic, group, 2)

    placed += produce(kafka, topic, [encode_json(m) for m in second])
    service = OnlineModel.resume(path, process=False, feed=feed())
    assert service.status()["source"]["learned"] == 600  # its counts go on too
    learned_from_topic(service, 1_000)
    time.sleep(1.0)  # nothing more comes
    service.close()
    assert service.model.n_learned == {"a": 1_000, "flag": 1_000}
    targets = np.array([m["y"]["a"] for m in first + second])
    assert service.model._outputs.scale.mean[0] == pytest.approx(targets.mean(), rel=1e-9)
    assert committed(kafka, topic, group, 2) == end_offsets(placed)


def test_a_commit_the_broker_does_not_answer_is_retried_and_the_feed_goes_on(kafka, tmp_path):
    """The broker stops answering just after a checkpoint: the commit times out, is
    logged and counted, and is sent again after a later poll; the feed keeps learning
    once the broker is back, and the group ends at the last message (the learner on a
    thread of this process)."""
    from stream_mtl import Binary, Regression
    from stream_mtl.connectors.kafka_feed import KafkaFeed
    from stream_mtl.service import OnlineModel

    if not hasattr(kafka, "frozen"):
        pytest.skip("an external broker cannot be paused")
    topic, group = unique("paused"), unique("group")
    kafka.create_topic(topic, partitions=2)
    first, second = synthetic_messages(300, seed=7), synthetic_messages(200, seed=8)
    placed = produce(kafka, topic, [encode_json(m) for m in first])
    feed = KafkaFeed(
        topic,
        bootstrap_servers=kafka.bootstrap,
        api_version=kafka.api_version,
        group_id=group,
        request_timeout_ms=3000,  # how long a commit waits for the broker
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    model = MultiTaskLearner(tasks={"a": Regression(), "flag": Binary()}, hidden=(8,), seed=0)
    service = OnlineModel(
        model, process=False, checkpoint=tmp_path / "model.ckpt", checkpoint_every=50, feed=feed
    )

    def source() -> dict:
        return service.status()["source"]

    wait_for(lambda: source()["learned"] == 300)
    with kafka.frozen():
        # 50 observations over the API: a checkpoint, whose position the feed commits
        for message in synthetic_messages(50, seed=9):
            service.learn(message["x"], message["y"])
        wait_for(lambda: source()["commit_failures"] >= 1)
        assert source()["stopped_by"] is None
    placed += produce(kafka, topic, [encode_json(m) for m in second])
    wait_for(lambda: source()["learned"] == 500)
    service.close()
    assert source()["stopped_by"] is None
    assert service.model.n_learned == {"a": 550, "flag": 550}
    assert committed(kafka, topic, group, 2) == end_offsets(placed)


def test_partitions_moved_to_a_second_service_are_learned_once_overall(kafka, tmp_path):
    """Two services learn one topic in one group; when the second joins, the first
    learns what it was delivered, checkpoints and commits before its partitions move
    (with a dead-letter topic to flush on the way): each message is learned by one of
    them, once (counts, and the label sums both models' running means give)."""
    from stream_mtl import Binary, Regression
    from stream_mtl.connectors.kafka_feed import KafkaFeed
    from stream_mtl.service import OnlineModel

    topic, group, dead = unique("moved"), unique("group"), unique("dead")
    kafka.create_topic(topic, partitions=4)
    messages = synthetic_messages(6_000, seed=6)
    values = [encode_json(m) for m in messages]
    values.insert(3_000, b"{not json")
    placed = produce(kafka, topic, values)

    def service(name: str) -> OnlineModel:
        feed = KafkaFeed(
            topic,
            bootstrap_servers=kafka.bootstrap,
            api_version=kafka.api_version,
            group_id=group,
            dead_letter_topic=dead,
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,  # the first member hears of the second soon
        )
        model = MultiTaskLearner(tasks={"a": Regression(), "flag": Binary()}, hidden=(8,), seed=0)
        return OnlineModel(model, process=False, checkpoint=tmp_path / f"{name}.ckpt", feed=feed)

    def learned(*services: OnlineModel) -> int:
        return sum(s.status()["source"]["learned"] for s in services)

    first = service("first")
    deadline = time.monotonic() + 120
    while learned(first) < 500:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = service("second")
    while learned(first, second) < 6_000:
        assert time.monotonic() < deadline, (learned(first), learned(second))
        time.sleep(0.1)
    assert learned(second) > 0, "the rebalance gave the second service nothing"
    # no periodic checkpoints here: the first one's was written when its partitions moved
    assert (tmp_path / "first.ckpt").exists()
    first.close()
    second.close()
    assert committed(kafka, topic, group, 4) == end_offsets(placed)
    counts = [s.model.n_learned["a"] for s in (first, second)]
    assert sum(counts) == 6_000
    sums = [n * s.model._outputs.scale.mean[0] for n, s in zip(counts, (first, second))]
    assert sum(sums) == pytest.approx(sum(m["y"]["a"] for m in messages), rel=1e-9)
