"""A snapshot sent as frame and arrays loads as it was, whether unpickled or copied into a spare."""

import pickle

import numpy as np
import pytest

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression, snapshot_wire
from stream_mtl.predictor import Snapshot
from stream_mtl.snapshot_wire import SnapshotLoader, encode
from stream_mtl.weighting import DriftAware, Uncertainty

MODELS = {
    "mixed": dict(
        tasks={"price": Regression(), "churn": Binary(), "kind": Multiclass()},
        weighting=DriftAware(Uncertainty()),
    ),
    "soft sharing": dict(tasks={"price": Regression(), "churn": Binary()}, sharing="soft"),
    "torch": dict(tasks={"price": Regression(), "churn": Binary()}, backend="torch"),
    "float32": dict(tasks={"price": Regression()}, dtype="float32"),
}


def rows(n: int, seed: int) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = {f"x{i}": float(v) for i, v in enumerate(rng.normal(size=5))}
        y = {
            "price": 2 * x["x0"] - x["x1"],
            "churn": x["x2"] + 0.3 * rng.normal() > 0.8,  # rare-ish: thresholds move
            "kind": int(x["x3"] > 0) + int(x["x4"] > 1),
        }
        out.append((x, y))
    return out


def model_of(kind: str) -> MultiTaskLearner:
    return MultiTaskLearner(hidden=(8,), seed=0, **MODELS[kind])


def learn(model: MultiTaskLearner, data: list[tuple[dict, dict]]) -> None:
    for x, y in data:
        model.learn_one(x, {task: label for task, label in y.items() if task in model.tasks})


def answers(snapshot: Snapshot, probes: list[dict]) -> list:
    return [(snapshot.predict_one(x), snapshot.predict_proba_one(x)) for x in probes]


def report(snapshot: Snapshot) -> tuple:
    return (
        snapshot.n_learned,
        snapshot.task_weights,
        snapshot.mixture,
        snapshot.thresholds,
        snapshot.classes,
        snapshot.task_affinity.values.tolist(),
        snapshot.drift_events,
    )


@pytest.mark.parametrize("kind", MODELS)
def test_each_load_predicts_and_reports_as_the_snapshot_sent(kind):
    model, loader = model_of(kind), SnapshotLoader()
    data, probes = rows(600, 0), [x for x, _ in rows(20, 1)]
    for start in range(0, 600, 50):
        learn(model, data[start : start + 50])
        sent = Snapshot(model)
        loaded = loader.load(encode(sent))
        assert answers(loaded, probes) == answers(sent, probes)
        assert report(loaded) == report(sent)
        del loaded  # as a prediction lets go of it: the next but one load may reuse it
    assert loader.n_copied >= 8, (loader.n_unpickled, loader.n_copied)


def test_a_snapshot_someone_holds_never_changes():
    model, loader = model_of("mixed"), SnapshotLoader()
    data, probes = rows(400, 0), [x for x, _ in rows(20, 1)]
    held = []
    for start in range(0, 400, 40):
        learn(model, data[start : start + 40])
        snapshot = loader.load(encode(Snapshot(model)))
        held.append((snapshot, answers(snapshot, probes), report(snapshot)))
    assert loader.n_copied == 0  # each was still held when its turn to be reused came
    for snapshot, then, reported in held:
        assert answers(snapshot, probes) == then and report(snapshot) == reported
    assert len({id(snapshot) for snapshot, _, _ in held}) == len(held)


def test_a_part_someone_holds_is_not_reused_either():
    model, loader = model_of("mixed"), SnapshotLoader()
    data, probe = rows(300, 0), rows(1, 1)[0][0]
    learn(model, data[:100])
    backend = loader.load(encode(Snapshot(model)))._backend
    before = backend.forward_one(np.zeros(backend.n_inputs)).tolist()
    for row in data[100:]:
        learn(model, [row])
        loader.load(encode(Snapshot(model)))
    assert loader.n_copied > 100  # the other snapshot was reused, not this one
    assert backend.forward_one(np.zeros(backend.n_inputs)).tolist() == before
    assert loader.load(encode(Snapshot(model))).predict_one(probe) == model.predict_one(probe)


def test_a_new_feature_class_or_task_makes_a_full_load():
    model, loader = model_of("mixed"), SnapshotLoader()
    learn(model, rows(100, 0))
    for _ in range(3):
        loader.load(encode(Snapshot(model)))
    refreshed = loader.n_copied
    model.add_task("margin", Regression())
    model.learn_one({"x0": 1.0, "colour": "red"}, {"kind": 7, "margin": 2.0})
    loaded = loader.load(encode(Snapshot(model)))
    assert loader.n_copied == refreshed
    assert "colour=red" in loaded._encoder.names and "margin" in loaded.tasks
    assert 7 in loaded.classes["kind"]
    probe = {"x0": 1.0, "colour": "red"}
    assert loaded.predict_one(probe) == model.predict_one(probe)


def test_the_payload_is_a_pickle_of_the_snapshot_and_the_arrays_alignment():
    model = model_of("mixed")
    learn(model, rows(100, 0))
    snapshot = Snapshot(model)
    pickled = len(pickle.dumps(snapshot, pickle.HIGHEST_PROTOCOL))
    payload = encode(snapshot)
    n_arrays = snapshot_wire.HEAD.unpack_from(payload)[2]
    assert len(payload) <= pickled + (snapshot_wire.ALIGN + 8) * n_arrays  # 8: a length
