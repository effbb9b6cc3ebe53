"""Several workers, one model (`stream-mtl run --workers N`): torch.distributed over gloo,
a real Kafka broker, real processes killed at random.

Each test starts the workers the way a user does, through torchrun, and checks the
final checkpoint's fingerprint: every message learned exactly once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_kafka import (
    assert_learned_exactly_once,
    check_a_failed_commit_is_sent_again,
    committed,
    end_offsets,
    new_model,
    produce,
    run_command,
    source_for,
    synthetic_messages,
    unique,
    wait_for,
)

from stream_mtl import MultiTaskLearner
from stream_mtl.cli import _children
from stream_mtl.connectors.messages import encode_json

pytest.importorskip("torch")
pytestmark = [pytest.mark.integration]


def run_workers(kafka, topic: str, group: str, checkpoint: Path, *options: str):
    """`stream-mtl run --workers 2 ...` as test_kafka runs one; the process and its log."""
    launcher = run_command(kafka, topic, group, checkpoint, "--workers", "2", *options)
    return launcher, max(checkpoint.parent.glob("run-*.log"))


def workers_of(launcher: subprocess.Popen) -> list[int]:
    """The worker processes: the children of torchrun, the launcher's child."""
    return [worker for agent in _children(launcher.pid) for worker in _children(agent)]


def test_a_worker_killed_at_a_random_point_restarts_the_group_and_each_message_is_learned_once(
    kafka, tmp_path
):
    topic, group = unique("workers"), unique("group")
    kafka.create_topic(topic, partitions=4)
    messages = synthetic_messages(20_000, seed=3)
    placed = produce(kafka, topic, [encode_json(m) for m in messages])
    checkpoint = tmp_path / "model.ckpt"
    options = ("--sync-every", "300", "--checkpoint-every", "1500", "--idle-exit", "3")
    launcher, log = run_workers(kafka, topic, group, checkpoint, *options)
    wait_for(checkpoint.exists, 120, "the first aligned checkpoint")
    time.sleep(random.Random(11).uniform(0.2, 1.5))
    victims = workers_of(launcher)
    assert len(victims) == 2, victims
    _, at_kill = MultiTaskLearner.load_with_extra(checkpoint)
    signal_sent = random.Random(5).choice(victims)
    subprocess.run(["kill", "-9", str(signal_sent)], check=True)
    assert launcher.wait(240) == 0, log.read_text()[-3000:]
    assert sum(at_kill["position"].values()) < 20_000, "killed too late to test a restart"

    text = log.read_text()
    assert "resumed from" in text  # the group started again from the aligned checkpoint
    ends = end_offsets(placed)
    extra = assert_learned_exactly_once(checkpoint, messages, ends)
    assert extra["workers"] == 2
    assert ends == committed(kafka, topic, group, 4)


def test_sigterm_stops_every_worker_with_one_aligned_checkpoint(kafka, tmp_path):
    topic, group = unique("workers-term"), unique("group")
    kafka.create_topic(topic, partitions=4)
    produce(kafka, topic, [encode_json(m) for m in synthetic_messages(20_000, seed=4)])
    checkpoint = tmp_path / "model.ckpt"
    launcher, log = run_workers(kafka, topic, group, checkpoint, "--checkpoint-every", "100000")
    wait_for(lambda: "consumed" in log.read_text(), 120, "the workers to start learning")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(60) == 0, log.read_text()[-3000:]

    model, extra = MultiTaskLearner.load_with_extra(checkpoint)
    assert extra["position"] == committed(kafka, topic, group, 4)
    assert {int(p) % 2 for p in extra["position"]} == {0, 1}  # both workers' partitions
    learned = sum(extra["position"].values())
    assert 0 < learned < 20_000
    assert model.n_learned == {"a": learned, "flag": learned}
    text = log.read_text()
    assert "[worker 0/2]" in text and "[worker 1/2]" in text
    # each worker stepped with twice the model's learning rate; the checkpoint keeps it
    assert text.count("steps with learning rate 0.002 (the model's 0.001, scaling linear)") == 2
    assert model.lr == model._backend.lr == 0.001


def test_held_features_follow_their_keys_partition_when_the_number_of_workers_changes(kafka):
    from types import SimpleNamespace

    from stream_mtl.connectors.distributed_loop import DistributedLoop

    topic = unique("held")
    kafka.create_topic(topic, partitions=4)
    keys = [f"k{i}" for i in range(40)]
    placed = produce(kafka, topic, [b"{}"] * len(keys), keys)  # where the producer puts them
    owner = {key: partition % 3 for key, (partition, _) in zip(keys, placed)}
    held = {
        str(rank): {
            "n_arrived": 20,
            "held": [[k, {"f": 1.0}, None, i, 0.0] for i, k in enumerate(keys[rank::2])],
        }
        for rank in range(2)
    }
    extra = {"workers": 2, "partitions": 4, "held": held}
    got = []
    for rank in range(3):  # three workers now
        worker = SimpleNamespace(group=SimpleNamespace(rank=rank, size=3))
        got.append({row[0] for row in DistributedLoop._held_features(worker, extra)["held"]})
        assert got[-1] == {k for k in keys if owner[k] == rank}
    assert set().union(*got) == set(keys)  # every held key goes to one worker
    same = SimpleNamespace(group=SimpleNamespace(rank=1, size=2))
    assert DistributedLoop._held_features(same, extra) == held["1"]  # as many: its own


def test_set_aside_counts_go_on_from_an_aligned_checkpoint(kafka, tmp_path):
    """The group's checkpoint sums its workers' set-aside counts; a group resumed from it
    goes on counting from there (rank 0 takes the checkpoint's counts, the others start
    at zero), not from nothing. One worker (`SoloGroup`) on a real broker."""
    from stream_mtl.connectors.distributed_loop import DistributedLoop
    from stream_mtl.connectors.kafka import KafkaSource
    from stream_mtl.distributed import SoloGroup

    topic, group = unique("aside"), unique("group")
    kafka.create_topic(topic, partitions=2)
    checkpoint = tmp_path / "model.ckpt"

    def run_once(values: list[bytes]) -> DistributedLoop:
        produce(kafka, topic, values)
        source = KafkaSource(
            topic,
            bootstrap_servers=kafka.bootstrap,
            group_id=group,
            api_version=kafka.api_version,
            share=(0, 1),
        )
        loop = DistributedLoop.resume_or_start(
            checkpoint, new_model, source, group=SoloGroup(), idle_timeout=2.0
        )
        loop.run()
        return loop

    good = [encode_json(m) for m in synthetic_messages(60, seed=12)]
    first = run_once([*good[:40], b"{not json", b"[1, 2]", b"{not json either"])
    assert sum(first.source.rejected.values()) == 3
    second = run_once([*good[40:], b"{still not json"])
    assert second.resumed
    _, extra = MultiTaskLearner.load_with_extra(checkpoint)
    assert sum(second.source.rejected.values()) == sum(extra["rejected"].values()) == 4
    assert sum(extra["learned"].values()) == 60


def test_an_aligned_checkpoints_commit_that_failed_is_sent_again_when_nothing_new_comes(
    kafka, tmp_path
):
    """As `check_a_failed_commit_is_sent_again` says, for one worker of a group
    (`SoloGroup`)."""
    from stream_mtl.connectors.distributed_loop import DistributedLoop
    from stream_mtl.distributed import SoloGroup

    def make_loop(topic: str, group: str, on_learned) -> DistributedLoop:
        source = source_for(kafka, topic, group, share=(0, 1), request_timeout_ms=3000)
        checkpoint = tmp_path / "model.ckpt"
        return DistributedLoop(new_model(), source, checkpoint, SoloGroup(), on_learned=on_learned)

    check_a_failed_commit_is_sent_again(kafka, make_loop)
