"""Checkpoints: one atomic file, no pickle, and a loaded model carries on exactly."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from conftest import assert_same_state, mixed_observation, mixed_tasks, model_state

from stream_mtl import Binary, InvalidCheckpoint, Multiclass, MultiTaskLearner, Regression
from stream_mtl.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
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
    _meta, arrays = load_checkpoint(path)
    assert all(array.dtype != object for array in arrays.values())


def test_a_truncated_file_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InvalidCheckpoint, match="is corrupt: its checksum does not match"):
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


def _rewrite(path, change_meta=None, change_arrays=None) -> None:
    """Change a checkpoint as a crafted file would: its checksum is made to match."""
    meta, arrays = load_checkpoint(path)
    if change_meta is not None:
        change_meta(meta)
    if change_arrays is not None:
        change_arrays(arrays)
    save_checkpoint(path, meta, arrays)


def test_a_checkpoint_of_another_format_version_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    _rewrite(path, lambda meta: meta.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(InvalidCheckpoint, match="format version"):
        MultiTaskLearner.load(path)


def test_a_checkpoint_naming_a_foreign_class_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    _rewrite(path, lambda meta: meta["weighting"]["spec"].update({"class": "os.system"}))
    with pytest.raises(InvalidCheckpoint, match=r"'os\.system', which is not one that"):
        MultiTaskLearner.load(path)


def test_a_checkpoint_with_missing_arrays_is_rejected(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    _rewrite(path, change_arrays=lambda arrays: arrays.pop("backend.param.trunk.0.weight"))
    with pytest.raises(InvalidCheckpoint, match=r"trunk layer 0 .* its arrays do not hold"):
        MultiTaskLearner.load(path)
    trained_model.save(path)
    _rewrite(path, change_arrays=lambda arrays: arrays.pop("encoder.scaled"))
    with pytest.raises(InvalidCheckpoint, match="incomplete or corrupt"):
        MultiTaskLearner.load(path)


def test_every_flipped_byte_of_a_checkpoint_is_refused(tmp_path):
    model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(2,), seed=0)
    model.learn_one({"x": 1.0}, {"a": 1.0})
    model.save(tmp_path / "m.ckpt")
    data = bytearray((tmp_path / "m.ckpt").read_bytes())
    for at in range(len(data)):
        data[at] ^= 0x01
        with pytest.raises(InvalidCheckpoint):
            read_checkpoint(bytes(data))
        data[at] ^= 0x01
    assert read_checkpoint(bytes(data))[0]["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize(
    ("change_meta", "message"),
    [
        (lambda m: m["params"].update(hidden=[10**6, 10**6]), "trunk layer 0 of width 1000000"),
        (lambda m: m["params"].update(forgetting=[0.99] * 500), "head linear2 for task"),
        (lambda m: m["weighting"]["spec"].update(params={"rm": 1}), "parameters it does not"),
        (
            lambda m: m["weighting"]["spec"]["params"]["detector"]["params"].update(delta="x"),
            "parameter 'delta' a str",
        ),
        (lambda m: m["tasks"][0][1].update({"class": "builtins.eval"}), "'builtins.eval'"),
        (lambda m: m["weighting"].update(spec=[1, 2]), "without a class name"),
    ],
)
def test_a_crafted_checkpoint_is_refused_before_anything_is_built(
    tmp_path, trained_model, change_meta, message
):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    _rewrite(path, change_meta=change_meta)
    with pytest.raises(InvalidCheckpoint, match=message):
        MultiTaskLearner.load(path)


def test_a_checkpoint_declaring_more_inputs_or_classes_than_it_holds_is_refused(tmp_path):
    model = _model()
    for obs in _stream(50, seed=0):
        model.learn_one(obs.x, obs.y)
    path = tmp_path / "m.ckpt"
    model.save(path)

    def wide_trunk(arrays):  # 10,000 inputs: their heads' covariances would take 800 MB each
        arrays["backend.param.trunk.0.weight"] = np.zeros((10_000, 16), dtype=np.float32)

    _rewrite(path, change_arrays=wide_trunk)
    with pytest.raises(InvalidCheckpoint, match="more inputs than its linear heads hold"):
        MultiTaskLearner.load(path)
    model.save(path)
    _rewrite(path, change_meta=lambda meta: meta["classes"]["c"].extend(range(100, 5000)))
    with pytest.raises(InvalidCheckpoint, match="head linear0 for task 'c'"):
        MultiTaskLearner.load(path)


def test_an_array_declaring_more_bytes_than_it_holds_is_refused_unallocated(tmp_path):
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, {}, {"w": np.zeros(4)})
    data = path.read_bytes()
    header = data[: data.index(b"\n", data.index(b"\n") + 1) + 1]
    crafted = io.BytesIO()  # what an attacker can write: valid zip CRCs, a valid checksum
    with (
        zipfile.ZipFile(io.BytesIO(data[len(header) :])) as source,
        zipfile.ZipFile(crafted, "w") as target,
    ):
        for info in source.infolist():
            member = source.read(info)
            if info.filename == "w.npy":
                member = member.replace(b"(4,), }" + b" " * 12, b"(4000000000000,), }")
            target.writestr(info.filename, member)
    archive = crafted.getvalue()
    header = header[: header.index(b"sha256 ") + 7] + hashlib.sha256(archive).hexdigest().encode()
    with pytest.raises(InvalidCheckpoint, match="declares 32,000,000,000,000 bytes"):
        read_checkpoint(header + b"\n" + archive)


def test_a_checkpoint_of_the_previous_format_still_loads(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    trained_model.save(path)
    meta, arrays = load_checkpoint(path)
    meta["format_version"] = 4  # what 0.1's saves wrote: a bare archive
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v4.npz", **arrays)
    restored = MultiTaskLearner.load(tmp_path / "v4.npz")
    assert restored.n_learned == trained_model.n_learned


def test_a_save_removes_what_killed_saves_left_behind(tmp_path, trained_model):
    path = tmp_path / "m.ckpt"
    orphan = tmp_path / ".m.ckpt.abc123"
    orphan.write_bytes(b"half a checkpoint")
    os.utime(orphan, (0, 0))
    fresh = tmp_path / ".m.ckpt.def456"  # a save under way in another process
    fresh.write_bytes(b"")
    trained_model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.ckpt.def456", "m.ckpt"]


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


def test_saving_a_class_a_checkpoint_cannot_load_back_is_refused_at_once(tmp_path):
    from river import drift

    from stream_mtl import InvalidInputType
    from stream_mtl.weighting import DriftAware

    class MyDetector(drift.ADWIN):
        pass

    model = MultiTaskLearner(
        tasks={"a": Regression()}, hidden=(2,), weighting=DriftAware(detector=MyDetector())
    )
    with pytest.raises(InvalidInputType, match="MyDetector cannot be stored in a checkpoint"):
        model.save(tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()
