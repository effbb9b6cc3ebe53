"""OnlineModel with its learner in a child process: snapshots, supervision, clean exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import predict_while_learning, wait_for

from stream_mtl import (
    Binary,
    InvalidInput,
    InvalidInputType,
    Multiclass,
    MultiTaskLearner,
    Regression,
    UnknownKey,
    learning_process,
)
from stream_mtl.service import OnlineModel, Unavailable


def new_model() -> MultiTaskLearner:
    return MultiTaskLearner(tasks={"a": Regression(), "flag": Binary()}, hidden=(16,), seed=0)


def observation(rng: np.random.Generator) -> tuple[dict, dict]:
    x = {f"x{j}": float(v) for j, v in enumerate(rng.normal(size=6))}
    return x, {"a": 3.0 * x["x0"] - x["x1"], "flag": x["x2"] > 0}


def learn_and_wait(service: OnlineModel, rng: np.random.Generator, n: int) -> None:
    """Learn `n` observations, and wait until the snapshot predictions use has them all."""
    for _ in range(n):
        service.learn(*observation(rng))
    wait_for(lambda: service.snapshot.n_learned.get("a", 0) == n)


def test_predictions_come_from_the_learners_latest_snapshot_and_move_as_it_learns():
    service = OnlineModel(new_model(), snapshot_ms=20)
    probe = observation(np.random.default_rng(1))[0]
    before = service.predict(probe)
    rng = np.random.default_rng(0)
    for _ in range(500):
        service.learn(*observation(rng))
    wait_for(lambda: service.snapshot.n_learned.get("a", 0) == 500)
    after = service.predict(probe)
    assert after != before
    assert service.learner_pid not in (None, os.getpid())
    assert service.snapshot_age < 1.0
    service.close()
    assert service.snapshot_age == float("inf")  # no learner to be behind any more
    assert service.model.n_learned == {"a": 500, "flag": 500}
    assert service.predict(probe) == service.model.predict_one(probe)  # the last snapshot


def test_no_prediction_loads_a_snapshot_the_loader_thread_swaps_them_in(monkeypatch):
    from stream_mtl.snapshot_wire import SnapshotLoader

    loaded_on: list[str] = []
    load = SnapshotLoader.load

    def recording_load(self, payload: bytes):
        loaded_on.append(threading.current_thread().name)
        return load(self, payload)

    service = OnlineModel(new_model(), snapshot_every=10)
    first = service.snapshot
    monkeypatch.setattr(SnapshotLoader, "load", recording_load)
    rng = np.random.default_rng(0)
    for _ in range(200):
        service.learn(*observation(rng))
        service.predict(observation(rng)[0])
    wait_for(lambda: service.snapshot.n_learned.get("a", 0) == 200)  # with no prediction
    assert service.snapshot is not first
    loader = service._engine._loader
    snapshots = [name for name in loaded_on if name == loader.name]
    assert len(snapshots) >= 2
    assert threading.main_thread().name not in loaded_on  # the predictions' thread
    # Loads copy new arrays into the snapshot before last where no prediction holds it.
    assert service.snapshot_loads["copied"] >= 1
    service.close()
    assert not loader.is_alive()


def test_eight_threads_predict_while_the_process_learns_and_each_prediction_is_whole():
    service = OnlineModel(new_model(), snapshot_every=20)
    probe = observation(np.random.default_rng(1))[0]

    def record() -> tuple:
        return service.snapshot.n_learned.get("a", 0), service.predict(probe)

    def learn(until_recorded) -> None:
        rng = np.random.default_rng(0)
        for n in range(1, 1_001):
            service.learn(*observation(rng))
            if n % 100 == 0:  # pause until a reader has predicted from this point
                until_recorded(lambda record, n=n: record[0] == n)
        service.close()

    records = predict_while_learning(service, record, learn)
    assert len(records) > 500
    by_count: dict[int, set] = {}
    for count, prediction in records:
        by_count.setdefault(count, set()).add((prediction["a"], prediction["flag"]))
    assert len(by_count) > 10, "the snapshot never moved while learning"
    answers = {answer for answers in by_count.values() for answer in answers}
    assert len(answers) > 10, "predictions never moved while learning"
    # A model that has learned n labels gives one answer: no prediction mixes two.
    assert all(len(answers) <= 2 for answers in by_count.values())


def test_new_features_and_classes_reach_the_predicting_process():
    model = MultiTaskLearner(tasks={"kind": Multiclass()}, hidden=(8,), seed=0)
    service = OnlineModel(model, snapshot_ms=10)
    assert service.predict({"size": 1.0}) == {"kind": None}  # no class seen yet
    for i in range(200):
        service.learn({"size": 1.0, "colour": "red" if i % 2 else "blue"}, {"kind": i % 3})
    wait_for(lambda: service.snapshot.n_learned.get("kind", 0) == 200)
    assert service.snapshot.classes == {"kind": [0, 1, 2]}
    assert service.predict({"size": 1.0, "colour": "red"})["kind"] in (0, 1, 2)
    assert "colour=red" in service.snapshot._encoder.names
    service.close()


def test_the_learner_process_runs_below_the_server_at_the_niceness_asked_also_once_restarted():
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    service = OnlineModel(new_model(), restart_delay=0.1)
    assert os.getpriority(os.PRIO_PROCESS, service.learner_pid) == min(ours + 19, 19)
    service.close()
    service = OnlineModel(new_model(), nice=3, restart_delay=0.1)
    first = service.learner_pid
    assert os.getpriority(os.PRIO_PROCESS, first) == min(ours + 3, 19)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: service.alive and service.learner_pid != first, 10)
    assert os.getpriority(os.PRIO_PROCESS, service.learner_pid) == min(ours + 3, 19)
    service.close()
    for bad in (-1, 20, 2.5, True):
        with pytest.raises(InvalidInput, match=r"nice must be an integer from 0 to 19, got"):
            OnlineModel(new_model(), nice=bad)


def test_a_killed_learner_process_is_restarted_from_its_checkpoint_and_predictions_go_on(
    tmp_path,
):
    path = tmp_path / "service.ckpt"
    service = OnlineModel(
        new_model(),
        checkpoint=path,
        checkpoint_seconds=3600,
        wal=tmp_path / "wal",
        restart_delay=2.0,  # time to look at it while it is down
    )
    rng = np.random.default_rng(0)
    learn_and_wait(service, rng, 300)
    probe = observation(rng)[0]
    served = service.predict(probe)
    first = service.learner_pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not service.alive, 10)
    # while it is down: learning is refused with the reason, predictions go on
    assert "the learner process died (exit code -9)" in service.unavailable
    assert service.predict(probe) == served
    with pytest.raises(Unavailable, match=r"the learner process died \(exit code -9\)"):
        service.learn(*observation(rng))
    wait_for(lambda: service.alive)
    assert service.learner_pid != first and service.n_restarts == 1
    # No checkpoint was written: it started from the first model and learned the log again.
    wait_for(lambda: service.snapshot.n_learned.get("a", 0) == 300)
    service.learn(*observation(rng))
    service.close()
    assert service.model.n_learned["a"] == 301
    assert MultiTaskLearner.load(path).n_learned["a"] == 301


def test_a_stopped_learner_process_never_makes_a_prediction_wait_and_learning_resumes(
    monkeypatch,
):
    """SIGSTOP: a learner that reads nothing (as one starved of CPU or stalled would).
    Predictions under a key send features to be held; once the socket and the bounded
    send queue are full they are served unheld, and `learn` is refused, never waits."""
    service = OnlineModel(new_model(), send_max_bytes=100_000)
    rng = np.random.default_rng(0)
    learn_and_wait(service, rng, 100)
    probe = observation(rng)[0]
    expected = service.predict(probe)
    pid = service.learner_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        monkeypatch.setattr(learning_process, "STATUS_WAIT", 0.5)
        with pytest.raises(Unavailable, match="did not answer in time"):
            service.status()  # what /healthz asks: 503 after STATUS_WAIT, not 30 s
        answers: list = []

        def predict_under_keys() -> None:
            for i in range(5_000):  # ~1.5 MB of features to hold: more than both buffers
                answers.append(service.predict(probe, key=f"order-{i}"))

        predicting = threading.Thread(target=predict_under_keys, daemon=True)
        predicting.start()
        predicting.join(60)
        assert not predicting.is_alive(), "a prediction waited for the stopped learner"
        assert answers == [expected] * 5_000
        assert service.n_not_held > 0
        with pytest.raises(Unavailable, match=r"not taking calls.*at most 100,000"):
            service.learn(*observation(rng))
        assert service.alive  # stalled, not dead: no restart
    finally:
        os.kill(pid, signal.SIGCONT)
    # What was queued reaches it in order; learning goes on from there.
    late = observation(rng)

    def learned_late() -> bool:
        try:
            service.learn(*late)
        except Unavailable:  # until half the send queue is written
            return False
        return True

    wait_for(learned_late)
    service.learn_label("order-0", {"a": 1.0, "flag": True})
    service.close()
    assert service.model.n_learned["a"] == 100 + 1 + 1
    for bad in (0, 1.5, True, "4 MiB"):
        with pytest.raises(InvalidInput, match="send_max_bytes must be a positive integer"):
            OnlineModel(new_model(), send_max_bytes=bad)


def test_without_restart_a_dead_learner_stays_down_with_the_reason():
    service = OnlineModel(new_model(), restart=False)
    os.kill(service.learner_pid, signal.SIGKILL)
    wait_for(lambda: service.unavailable is not None, 10)
    assert "the learner process died (exit code -9)" in service.unavailable
    with pytest.raises(Unavailable, match="died"):
        service.learn(*observation(np.random.default_rng(0)))
    assert service.predict({"x0": 1.0}) is not None
    service.close()


def test_a_script_without_a_main_guard_starts_one_learner_and_it_exits_with_its_parent(
    tmp_path,
):
    script = tmp_path / "service_script.py"  # no `if __name__ == "__main__"`, on purpose
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from stream_mtl import MultiTaskLearner, Regression
            from stream_mtl.service import OnlineModel
            service = OnlineModel(MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,)))
            service.learn({"x": 1.0}, {"y": 2.0})
            print(service.learner_pid, flush=True)
            time.sleep(600)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        learner = int(parent.stdout.readline())
        assert _alive(learner)
        parent.kill()  # SIGKILL: no close(), no atexit
        parent.wait()
        wait_for(lambda: not _alive(learner), 10)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_model_the_learner_process_cannot_load_is_refused_at_start():
    class Local(Regression):  # a class the learner process cannot import
        pass

    with pytest.raises(InvalidInputType, match=r"cannot be sent to a learner process.*Local"):
        OnlineModel(MultiTaskLearner(tasks={"y": Local()}, hidden=(4,)))


def test_status_counts_come_from_the_learner_process():
    service = OnlineModel(new_model(), queue_size=100)
    rng = np.random.default_rng(0)
    service.learn(*observation(rng))
    service.predict({"x0": 1.0}, key="k1")
    service.learn_label("k1", {"a": 1.0})
    service.predict({"x0": 1.0}, key="k2")
    status = service.status()
    assert status["n_queued"] == 2 and status["held"] == 1 and status["unavailable"] is None
    service.close()
    assert service.n_queued == 2 and service.errors["a"].get() is not None
    with pytest.raises(RuntimeError, match="closed"):
        service.learn(*observation(rng))


def test_an_attached_service_shares_the_learner_and_finds_it_again_after_a_restart(tmp_path):
    address = tmp_path / "learner.sock"
    owner = OnlineModel(
        new_model(), checkpoint=tmp_path / "m.ckpt", listen=address, restart_delay=1.0
    )
    other = OnlineModel.attach(owner.board, address)  # as a `serve --workers` worker does
    rng = np.random.default_rng(0)
    for _ in range(50):
        other.learn(*observation(rng))
    other.predict({"x0": 1.0}, key="from-other")
    # A hold is in order with the later calls of the process that sent it, not with
    # another process's: a label sent through the owner at the same instant could reach
    # the learner first (it did once in CI). `status` returns once the hold is done.
    other.status()
    owner.learn_label("from-other", {"a": 1.0})  # held by one, labelled through the other
    wait_for(lambda: owner.snapshot.n_learned.get("a", 0) == 51)
    assert other.predict({"x0": 2.0}) == owner.predict({"x0": 2.0})  # one snapshot
    assert other.learner_pid == owner.learner_pid

    os.kill(owner.learner_pid, signal.SIGKILL)
    wait_for(lambda: other.unavailable is not None, 10)
    with pytest.raises(Unavailable):
        other.learn(*observation(rng))
    wait_for(lambda: owner.alive and other.unavailable is None)
    assert other.n_restarts == 1
    other.learn(*observation(rng))
    other.close()  # lets go; the owner's learner goes on
    owner.learn(*observation(rng))
    owner.close()
    # No log and no checkpoint before the kill: the restart began from the first model,
    # and what was learned before is lost, as documented; both learned after it.
    assert owner.model.n_learned["a"] == 2


# Without a log, calls are answered on the connection's thread; with one, in the pool.
@pytest.mark.parametrize("logged", [False, True])
def test_a_label_that_overtakes_its_features_from_another_serving_process_waits_for_them(
    tmp_path, logged
):
    # serve --workers: the worker that served a prediction sends its features on its own
    # connection, and another worker may forward the label first. Here the label goes out
    # 50 ms before the features; the learner waits for them (label_grace) and learns it.
    address, grace = tmp_path / "learner.sock", 2.0
    log = {"checkpoint": tmp_path / "m.ckpt", "wal": tmp_path / "wal"} if logged else {}
    # the default bound on labels waiting at once, and a bound of its own
    late = 5 if logged else learning_process.LATE_LABELS
    bound = {"max_late_labels": late} if logged else {}
    owner = OnlineModel(
        new_model(), listen=address, label_grace=grace, block_timeout=0, **log, **bound
    )
    other = OnlineModel.attach(owner.board, address)
    answers: list = []
    label = threading.Thread(
        target=lambda: answers.append(other.learn_label("late", {"a": 1.0})), daemon=True
    )
    label.start()
    time.sleep(0.05)
    assert label.is_alive()  # waiting for the features, not refused
    owner.predict({"x0": 1.0}, key="late")
    label.join(5)
    assert len(answers) == 1
    wait_for(lambda: owner.snapshot.n_learned.get("a", 0) == 1)

    refused: list = []

    def label_for_no_features(key: str) -> None:
        started = time.monotonic()
        try:
            other.learn_label(key, {"a": 1.0})
        except UnknownKey:
            refused.append(time.monotonic() - started)

    # Features that never come: refused once the grace is over, as before. At most
    # `late` wait at once: beyond, a label for no features is refused at once.
    waiting = [
        threading.Thread(target=label_for_no_features, args=(f"none-{i}",), daemon=True)
        for i in range(late)
    ]
    for thread in waiting:
        thread.start()
    wait_for(lambda: owner.status()["late_labels_waiting"] == late)
    label_for_no_features("one-too-many")
    assert len(refused) == 1 and refused[0] < grace / 2
    for thread in waiting:
        thread.join(10)
    assert len(refused) == 1 + late
    assert min(refused[1:]) >= grace
    assert owner.status()["late_labels_waiting"] == 0
    other.close()
    owner.close()
    for bad in (-1, 61, True, "0.1"):
        with pytest.raises(InvalidInput, match="label_grace must be seconds"):
            OnlineModel(new_model(), label_grace=bad)
    for bad in (-1, learning_process.MAX_LATE_LABELS + 1, True, 2.0):
        with pytest.raises(InvalidInput, match="max_late_labels must be an integer from 0"):
            OnlineModel(new_model(), max_late_labels=bad)


def test_an_answer_that_cannot_be_read_fails_its_call_and_the_link_connects_again(tmp_path):
    from multiprocessing.connection import Listener

    from stream_mtl.learning_process import LearnerClient
    from stream_mtl.shared_snapshot import SnapshotBoard

    board, address = SnapshotBoard.create(), str(tmp_path / "learner.sock")
    accepted = []

    def answer_garbage_then_hold(listener: Listener) -> None:
        first = listener.accept()
        accepted.append(first)
        first.recv_bytes()  # the call
        first.send_bytes(b"not a pickle")
        accepted.append(listener.accept())  # the link comes back

    with Listener(address, family="AF_UNIX") as listener:
        server = threading.Thread(target=answer_garbage_then_hold, args=(listener,))
        server.start()
        client = LearnerClient(board.name, address, connect_timeout=10)
        with pytest.raises(Unavailable, match="went away"):
            client.status()  # at once: not "did not answer" after STATUS_WAIT
        server.join(10)
        assert len(accepted) == 2
        client.close()
    for conn in accepted:
        conn.close()
    board.unlink()


@pytest.mark.parametrize("process", [True, False])
def test_learn_async_and_learn_label_async_learn_as_their_blocking_forms_do(process):
    import asyncio

    service = OnlineModel(new_model(), process=process)
    rng = np.random.default_rng(0)

    async def learn_some() -> None:
        for _ in range(50):
            assert await service.learn_async(*observation(rng)) >= 0
        x, y = observation(rng)
        service.predict(x, key="order-1")
        await service.learn_label_async("order-1", y)
        with pytest.raises(InvalidInput, match="NaN"):
            await service.learn_async({"x0": float("nan")}, {"a": 1.0})
        with pytest.raises(InvalidInput):  # UnknownKey: nothing held under it
            await service.learn_label_async("order-2", y)

    asyncio.run(learn_some())
    wait_for(lambda: service.snapshot.n_learned.get("a", 0) == 51)
    service.close()
    assert service.model.n_learned == {"a": 51, "flag": 51}
