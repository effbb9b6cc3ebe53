"""Checkpoints: one atomic file, no pickle, and a loaded model carries on exactly."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from conftest import assert_same_state, mixed_observation, mixed_tasks, model_state

from stream_mtl import Binary, InvalidCheckpoint, Multiclass, MultiTaskLearner, Regression
from stream_mtl.checkpoint import FORMAT_VERSION
from stream_mtl.connectors.synthetic import SyntheticStream


def _stream(n: int, seed: int):
    tasks = {"a": "regression", "b": "binary", "c": "multiclass"}
    return SyntheticStream(tasks=tasks, n=n, label_share=0.67, seed=seed)


def _model(**params) -> MultiTaskLearner:
    tasks = {"a": Regression(), "b": Binary(), "c": Multiclass()}
    return MultiTaskLearner(tasks=tasks, hidden=(16, 8), seed=0, **params)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_loaded_model_predicts_and_learns_exactly_like_one_that_never_stopped(
    tmp_path, optimizer
):
    uninterrupted, interrupted = _model(optimizer=optimizer), _model(optimizer=optimizer)
    first, second = _stream(1500, seed=1), list(_stream(1500, seed=2))
    for obs in first:
        uninterrupted.learn_one(obs.x, obs.y)
        interrupted.learn_one(obs.x, obs.y)
    interrupted.save(tmp_path / "model.ckpt")
    restored = MultiTaskLearner.load(tmp_path / "model.ckpt")
    for obs in second:
        assert restored.predict_one(obs.x) == uninterrupted.predict_one(obs.x)
        assert restored.predict_proba_one(obs.x) == uninterrupted.predict_proba_one(obs.x)
        restored.learn_one(obs.x, obs.y)
        uninterrupted.learn_one(obs.x, obs.y)
    assert_same_state(model_state(restored), model_state(uninterrupted))


def test_a_checkpoint_keeps_added_tasks_classes_and_counts(tmp_path, trained_model):
    trained_model.add_task("margin", Regression())
    trained_model.save(tmp_path / "m.ckpt")
    restored = MultiTaskLearner.load(tmp_path / "m.ckpt")
    assert list(restored.tasks) == ["price", "churn", "segment", "margin"]
    assert restored.classes == trained_model.classes
    assert restored.n_learned == trained_model.n_learned
    assert restored._get_params().keys() == trained_model._get_params().keys()


def test_a_checkpoint_keeps_each_tasks_settings(tmp_path):
    model = MultiTaskLearner(tasks={"b": Binary(threshold=0.3)}, hidden=(4,), seed=0)
    model.save(tmp_path / "m.ckpt")
    restored = MultiTaskLearner.load(tmp_path / "m.ckpt")
    assert restored.tasks["b"].threshold == 0.3 and restored.thresholds == {"b": 0.3}


def test_extra_data_travels_with_the_checkpoint(tmp_path, trained_model):
    trained_model.save(tmp_path / "m.ckpt", extra={"offsets": {"topic-0": 41}})
    _, extra = MultiTaskLearner.load_with_extra(tmp_path / "m.ckpt")
    assert extra == {"offsets": {"topic-0": 41}}


def test_saving_replaces_the_file_atomically_and_leaves_no_temporary_file(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    trained_model.learn_one({"a": 1.0}, {"price": 2.0})
    trained_model.save(path)
    assert os.listdir(tmp_path) == ["m.ckpt"]
    assert MultiTaskLearner.load(path).n_learned == trained_model.n_learned


def test_a_checkpoint_gets_the_mode_of_any_new_file(tmp_path, trained_model):
    umask = os.umask(0o022)
    try:
        trained_model.save(tmp_path / "m.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.ckpt").stat().st_mode & 0o777 == 0o644


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    with pytest.raises(TypeError):
        trained_model.save(path, extra={"not json": object()})
    assert os.listdir(tmp_path) == ["m.ckpt"]
    assert MultiTaskLearner.load(path).n_learned == trained_model.n_learned


def test_a_save_that_fails_after_writing_leaves_no_temporary_file(tmp_path, trained_model):
    occupied = tmp_path / "m.ckpt"
    occupied.mkdir()  # the final rename onto a directory fails, after the data is written
    with pytest.raises(OSError):
        trained_model.save(occupied)
    assert os.listdir(tmp_path) == ["m.ckpt"] and occupied.is_dir()


def test_a_checkpoint_holds_no_pickle(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            assert archive[name].dtype != object


def test_a_truncated_file_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InvalidCheckpoint, match="not a stream-mtl checkpoint"):
        MultiTaskLearner.load(path)


def test_a_foreign_npz_is_rejected(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(InvalidCheckpoint, match="no metadata"):
        MultiTaskLearner.load(path)


def test_a_text_file_is_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidCheckpoint, match="not a stream-mtl checkpoint"):
        MultiTaskLearner.load(path)


def test_a_pickle_is_refused_without_advice_to_unpickle_it(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    with pytest.raises(InvalidCheckpoint, match="holds pickled Python objects") as raised:
        MultiTaskLearner.load(path)
    assert "allow_pickle" not in str(raised.value)


def _rewrite_meta(path, change) -> None:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    change(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    os.replace(str(path) + ".npz", path)


def test_a_checkpoint_of_another_format_version_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    _rewrite_meta(path, lambda meta: meta.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(InvalidCheckpoint, match="format version"):
        MultiTaskLearner.load(path)


def test_a_checkpoint_naming_a_foreign_class_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    _rewrite_meta(path, lambda meta: meta["weighting"]["spec"].update({"class": "os.system"}))
    with pytest.raises(InvalidCheckpoint, match="outside stream_mtl and river"):
        MultiTaskLearner.load(path)


def test_a_checkpoint_with_missing_arrays_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {n: archive[n] for n in archive.files if not n.startswith("backend.param.trunk")}
    np.savez(path, **arrays)
    os.replace(str(path) + ".npz", path)
    with pytest.raises(InvalidCheckpoint, match="incomplete or corrupt"):
        MultiTaskLearner.load(path)


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        MultiTaskLearner.load(tmp_path / "absent.ckpt")


def test_a_checkpoint_loads_into_the_numpy_backend_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(4,), seed=0)
    for _ in range(20):
        model.learn_one(*mixed_observation(rng))
    model.save(tmp_path / "m.ckpt")
    restored = MultiTaskLearner.load(tmp_path / "m.ckpt", backend="numpy", device="cpu")
    x, _ = mixed_observation(rng)
    assert restored.predict_one(x) == model.predict_one(x)
