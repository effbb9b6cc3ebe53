"""OnlineModel: snapshot predictions from many threads while the learner learns.

Tests that hook into the learner (`on_snapshot`) or read its log with caplog run it on a
thread (`process=False`); the others run it as users get it, in a child process."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
from conftest import predict_while_learning, wait_for

from stream_mtl import Binary, InvalidInput, MultiTaskLearner, Regression
from stream_mtl.predictor import Snapshot
from stream_mtl.service import OnlineModel, QueueFull, Unavailable, UnknownKey


def new_model(hidden=(16,)) -> MultiTaskLearner:
    return MultiTaskLearner(tasks={"a": Regression(), "flag": Binary()}, hidden=hidden, seed=0)


def observation(rng: np.random.Generator) -> tuple[dict, dict]:
    x = {f"x{j}": float(v) for j, v in enumerate(rng.normal(size=6))}
    return x, {"a": 3.0 * x["x0"] - x["x1"], "flag": x["x2"] > 0}


def test_eight_threads_predict_while_one_learns_and_every_prediction_is_from_one_snapshot():
    snapshots: dict[int, MultiTaskLearner] = {}
    service = OnlineModel(
        new_model(),
        process=False,
        snapshot_every=40,
        on_snapshot=lambda s: snapshots.__setitem__(id(s), s),
    )
    snapshots[id(service.snapshot)] = service.snapshot
    probe = observation(np.random.default_rng(1))[0]

    def record() -> tuple:
        snapshot = service.snapshot
        return id(snapshot), snapshot.predict_one(probe), service.predict(probe)

    def learn(until_recorded) -> None:
        rng = np.random.default_rng(0)
        for n in range(1, 2_001):
            service.learn(*observation(rng))
            if n % 200 == 0:  # pause until a reader has predicted from this point
                wait_for(lambda n=n: service.snapshot.n_learned.get("a", 0) == n)
                latest = id(service.snapshot)
                until_recorded(lambda record, latest=latest: record[0] == latest)
        service.close()

    records = predict_while_learning(service, record, learn)
    assert service.model.n_learned == {"a": 2_000, "flag": 2_000}
    assert service.n_snapshots >= 2_000 // 40
    assert len(records) > 1000
    distinct = {(r[1]["a"], r[1]["flag"]) for r in records}
    assert len(distinct) > 10, "predictions never moved while learning"
    for snapshot_id, from_snapshot, _ in records[:: max(1, len(records) // 2000)]:
        # Every prediction is exactly what one published snapshot says: none is torn.
        assert snapshots[snapshot_id].predict_one(probe) == from_snapshot


def test_a_bad_observation_raises_in_the_callers_thread_and_is_never_queued():
    service = OnlineModel(new_model())
    with pytest.raises(ValueError, match="feature 'x0' is NaN"):
        service.learn({"x0": float("nan")}, {"a": 1.0})
    with pytest.raises(ValueError, match="unknown task 'margin'"):
        service.learn({"x0": 1.0}, {"margin": 1.0})
    with pytest.raises(TypeError, match="regression task 'a'"):
        service.learn({"x0": 1.0}, {"a": "high"})
    service.close()
    assert service.n_queued == 0 and service.learn_errors == 0
    assert service.model.n_learned == {"a": 0, "flag": 0}


@pytest.mark.parametrize("block_timeout", [0, 0.001])
def test_a_full_queue_refuses_after_the_wait_and_nothing_is_lost(block_timeout):
    service = OnlineModel(new_model(hidden=(512, 512)), queue_size=4, block_timeout=block_timeout)
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(300):
        try:
            service.learn(*observation(rng))
        except QueueFull as error:
            assert "learn queue is full (4 observations waiting)" in str(error)
            refused += 1
    service.close()
    assert refused > 0
    assert service.n_refused == refused
    assert service.model.n_learned["a"] == 300 - refused == service.n_queued


def test_labels_join_the_features_predicted_under_their_key():
    service = OnlineModel(new_model())
    service.predict({"x0": 1.0, "x1": 2.0}, key="order-7")
    service.learn_label("order-7", {"a": 5.0})
    with pytest.raises(UnknownKey, match="no features are held under key 'order-7'"):
        service.learn_label("order-7", {"a": 5.0})  # joined once only
    with pytest.raises(UnknownKey, match="'nobody'"):
        service.learn_label("nobody", {"a": 1.0})
    service.close()
    assert service.model.n_learned == {"a": 1, "flag": 0}


def test_the_rolling_error_scores_the_prediction_served_under_the_key():
    service = OnlineModel(new_model(), snapshot_every=1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        service.learn(*observation(rng))
    x = {"x0": 1.0, "x1": 0.0}
    served = service.predict(x, key="order-7")["a"]
    for _ in range(300):  # the model moves on before the label comes
        service.learn(*observation(rng))
    service.learn_label("order-7", {"a": 50.0})
    service.close()
    assert service.model.predict_one(x)["a"] != pytest.approx(served)
    assert service.errors["a"]._errors[-1] == pytest.approx(abs(50.0 - served))


def test_held_features_expire_by_age_and_each_expiry_is_counted():
    service = OnlineModel(new_model(), label_max_age=0.05)
    service.predict({"x0": 1.0}, key="slow")
    service.predict({"x0": 1.0}, key="quick")
    service.learn_label("quick", {"a": 1.0})
    time.sleep(0.1)
    with pytest.raises(UnknownKey, match="'slow'"):
        service.learn_label("slow", {"a": 1.0})
    service.close()
    assert service.expired() == {"count": 0, "age": 1, "bytes": 0}


def test_a_label_refused_for_a_full_queue_can_be_sent_again():
    service = OnlineModel(new_model(hidden=(512, 512)), queue_size=1, block_timeout=0)
    rng = np.random.default_rng(0)
    x = {"x0": 1.0}
    refused = False
    for _ in range(1000):
        service.predict(x, key="retry")
        with contextlib.suppress(QueueFull):
            service.learn(*observation(rng))  # fills the one place in the queue
        try:
            service.learn_label("retry", {"a": 1.0})
        except QueueFull:
            refused = True
            break
    assert refused
    deadline = time.monotonic() + 30
    while True:  # as the 503 asks: send it again once the queue has room
        try:
            service.learn_label("retry", {"a": 1.0})
            break
        except QueueFull:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    service.close()
    assert service.n_queued == service.model.n_learned["a"]


def test_close_checkpoints_and_a_restart_goes_on_from_there(tmp_path):
    path = tmp_path / "service.ckpt"
    service = OnlineModel(new_model(), checkpoint=path, checkpoint_seconds=0.05)
    rng = np.random.default_rng(0)
    for _ in range(500):
        service.learn(*observation(rng))
    service.close()
    restored = MultiTaskLearner.load(path)
    assert restored.n_learned == {"a": 500, "flag": 500}
    probe = observation(rng)[0]
    assert restored.predict_one(probe) == service.predict(probe)
    with pytest.raises(RuntimeError, match="closed"):
        service.learn(*observation(rng))


def test_features_held_under_keys_survive_a_restart_with_their_served_predictions(tmp_path):
    path = tmp_path / "service.ckpt"
    service = OnlineModel(new_model(), checkpoint=path)
    first = service.predict({"x0": 1.0}, key=("shop", 7))
    second = service.predict({"x0": 2.0}, key="order-2")
    with pytest.raises(InvalidInput, match="a key must be a string"):
        service.predict({"x0": 1.0}, key=frozenset({1}))  # a checkpoint could not write it
    service.close()
    again = OnlineModel.resume(path)
    assert again.status()["held"] == 2
    again.learn_label(("shop", 7), {"a": 1.0})  # no UnknownKey: it was held across
    again.learn_label("order-2", {"a": 2.0})
    again.close()
    assert again.model.n_learned["a"] == 2
    # the rolling error scores the predictions served before the restart
    served_error = (abs(1.0 - first["a"]) + abs(2.0 - second["a"])) / 2
    assert again.errors["a"].get() == pytest.approx(served_error)


def test_a_failing_checkpoint_refuses_learning_with_the_reason_until_one_succeeds(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "service.ckpt"
    service = OnlineModel(new_model(), checkpoint=path, checkpoint_seconds=0.05)
    rng = np.random.default_rng(0)
    service.learn(*observation(rng))
    service.predict({"x0": 1.0}, key="late")
    # a file where the checkpoint's folder was: saves fail with a real OSError, as they
    # would on a full or lost disk, until the folder is given back
    folder.rename(tmp_path / "away")
    folder.write_text("not a folder")
    deadline = time.monotonic() + 30
    while service.unavailable is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "the last checkpoint failed (FileExistsError" in service.unavailable
    with pytest.raises(Unavailable, match="refused until one succeeds"):
        service.learn(*observation(rng))
    with pytest.raises(Unavailable, match="the last checkpoint failed"):
        service.learn_label("late", {"a": 1.0})
    assert service.status()["held"] == 1  # refused: the features stay held for a retry
    folder.unlink()
    (tmp_path / "away").rename(folder)
    while service.unavailable is not None:  # retried within CHECKPOINT_RETRY_SECONDS
        assert time.monotonic() < deadline
        time.sleep(0.05)
    service.learn_label("late", {"a": 1.0})
    service.close()
    assert service.n_checkpoint_failures >= 1
    assert MultiTaskLearner.load(path).n_learned["a"] == 2


def test_a_learner_that_dies_refuses_learning_and_close_does_not_hang(caplog):
    def broken(_snapshot):
        raise RuntimeError("a callback bug")

    service = OnlineModel(new_model(), process=False, on_snapshot=broken, queue_size=10)
    rng = np.random.default_rng(0)
    with contextlib.suppress(Unavailable):
        for _ in range(10):
            service.learn(*observation(rng))
    deadline = time.monotonic() + 30
    while service.alive:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(Unavailable, match=r"the learner stopped: RuntimeError\('a callback bug'\)"):
        service.learn(*observation(rng))
    started = time.monotonic()
    with contextlib.suppress(RuntimeError):  # the last publish calls the callback again
        service.close()
    assert time.monotonic() - started < 5
    assert "the learner thread stopped" in caplog.text and "callback bug" in caplog.text


def test_close_takes_at_most_close_timeout_to_learn_what_is_queued(tmp_path, caplog):
    path = tmp_path / "service.ckpt"
    service = OnlineModel(
        new_model(hidden=(256, 256)), process=False, checkpoint=path, close_timeout=0.5
    )
    rng = np.random.default_rng(0)
    for _ in range(5_000):
        service.learn(*observation(rng))
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 10  # 0.5 s, the step under way, a checkpoint
    learned = MultiTaskLearner.load(path).n_learned["a"]
    assert 0 < learned < 5_000
    assert f"closed with {5_000 - learned} accepted observations not learned" in caplog.text


def test_importing_the_service_loads_neither_the_evaluation_package_nor_tqdm(fresh_python):
    loaded = fresh_python(
        "import sys, stream_mtl.service; "
        "print(sorted(m for m in sys.modules if m.startswith(('stream_mtl.evaluate', 'tqdm'))))"
    )
    assert loaded == "[]"


def test_max_features_counts_the_features_of_observations_still_queued():
    """The snapshot that checks an offer knows only what was learned; features accepted
    and still queued count against max_features too, so nothing accepted is dropped."""
    model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(4,), max_features=5)
    service = OnlineModel(model, snapshot_every=10_000, snapshot_ms=60_000)
    for i in range(3):
        service.learn({"base": 1.0, f"f{i}": 1.0}, {"a": 1.0})  # 4 features in all
    with pytest.raises(InvalidInput, match="'f4' would be distinct feature number 6"):
        service.learn({"f3": 1.0, "f4": 1.0}, {"a": 1.0})
    service.learn({"f3": 1.0}, {"a": 1.0})
    with pytest.raises(InvalidInput, match="beyond max_features=5"):
        service.learn({"f9": 1.0}, {"a": 1.0})
    service.close()
    assert service.learn_errors == 0 and service.model.n_learned == {"a": 4}


def test_callers_waiting_for_room_each_wait_at_most_block_timeout():
    service = OnlineModel(  # a learner slowed to 0.5 s an observation: the queue stays full
        new_model(),
        process=False,
        queue_size=1,
        block_timeout=0.2,
        snapshot_every=1,
        on_snapshot=lambda _snapshot: time.sleep(0.5),
    )
    rng = np.random.default_rng(0)
    waits: list[float] = []

    def learn() -> None:
        for _ in range(5):
            started = time.monotonic()
            with contextlib.suppress(QueueFull):
                service.learn(*observation(rng))
            waits.append(time.monotonic() - started)

    threads = [threading.Thread(target=learn) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    service.close()
    assert service.n_refused > 0
    assert max(waits) < 0.6  # 0.2 s each, not in turn behind one another (up to 1.2 s)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_snapshot_predicts_as_the_model_without_what_only_learning_reads(backend):
    model = MultiTaskLearner(
        tasks={"a": Regression(), "flag": Binary()}, hidden=(16,), backend=backend, seed=0
    )
    rng = np.random.default_rng(0)
    for _ in range(200):
        model.learn_one(*observation(rng))
    snapshot = Snapshot(model)
    copied = snapshot._backend
    assert all(head.cov is None for head in [*copied.linear, *copied.top, copied.shared])
    assert copied._moments is None
    assert all(head.cov is not None for head in model._backend.linear)  # the model keeps them
    for _ in range(50):
        x = observation(rng)[0]
        assert snapshot.predict_one(x) == model.predict_one(x)


def test_checkpoint_every_bounds_what_a_kill_without_a_log_can_lose(tmp_path):
    path = tmp_path / "service.ckpt"
    service = OnlineModel(new_model(), checkpoint=path, checkpoint_every=50)
    rng = np.random.default_rng(0)
    for _ in range(120):
        service.learn(*observation(rng))
    wait_for(lambda: service.snapshot.n_learned.get("a", 0) == 120)
    # what a kill now would leave: the checkpoint after 100, not 120 (and no file lost)
    assert MultiTaskLearner.load(path).n_learned["a"] == 100
    service.close()
    assert MultiTaskLearner.load(path).n_learned["a"] == 120
    with pytest.raises(InvalidInput, match="checkpoint_every must be a positive integer"):
        OnlineModel(new_model(), process=False, checkpoint=path, checkpoint_every=0)


def test_a_service_compiles_its_kernels_at_start_and_nothing_after(tmp_path):
    """In a fresh process: once `OnlineModel` is built, every kernel has its compiled
    version (`all_finite` two: the trunk's float32 buffer, the float64 mixture; one row's
    prediction and step, for this model's settings), and
    predicting and learning (keys, labels, a binary task) add none: no request waits
    for a compile."""
    import subprocess
    import sys

    code = """
import numpy as np
from stream_mtl import Binary, MultiTaskLearner, Regression
from stream_mtl.backends import kernels, row_kernel
from stream_mtl.service import OnlineModel

every = [getattr(kernels, name) for name in ("linear_outputs", "second_order_row_step",
                                             "hedge_step", "all_finite")]
every += [kernels.all_finite_matrices, row_kernel.row_predict, row_kernel.row_step]
compiled = lambda: [len(kernel.signatures) for kernel in every]
print(compiled())
model = MultiTaskLearner(tasks={"a": Regression(), "b": Binary()}, hidden=(8,), seed=0)
service = OnlineModel(model, process=False)
print(compiled())
rng = np.random.default_rng(0)
for i in range(200):
    x = {"x0": float(rng.normal()), "x1": float(rng.normal())}
    service.predict(x, key=i)
    service.learn_label(i, {"a": x["x0"], "b": x["x1"] > 0})
service.close()
assert service.model.n_learned == {"a": 200, "b": 200}, service.model.n_learned
print(compiled())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    before, after, at_end = done.stdout.split("\n")[:3]
    assert before == "[0, 0, 0, 0, 0, 0, 0]"
    assert after == at_end == "[1, 1, 1, 2, 1, 1, 1]"
