"""The torch backend: the NumPy backend's model, maths and state, in mini-batches, CPU or GPU."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression
from stream_mtl.backends.init import initial_trunk
from stream_mtl.backends.numpy import NumpyBackend
from stream_mtl.backends.torch import TorchBackend
from stream_mtl.connectors.synthetic import SyntheticStream

KINDS = {"a": "regression", "b": "binary", "c": "multiclass"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(backend: str, optimizer: str = "adam", device: str = "cpu") -> MultiTaskLearner:
    tasks = {"a": Regression(), "b": Binary(), "c": Multiclass()}
    return MultiTaskLearner(
        tasks=tasks, hidden=(16, 8), backend=backend, device=device, optimizer=optimizer,
        dtype="float64", seed=0,
    )  # fmt: skip


def _stream(n: int, seed: int = 0):
    return list(SyntheticStream(tasks=KINDS, n=n, label_share=0.67, seed=seed))


def _batches(observations, size: int):
    for i in range(0, len(observations), size):
        chunk = observations[i : i + size]
        yield pd.DataFrame([o.x for o in chunk]), pd.DataFrame([o.y for o in chunk])


def assert_same_parameters(a: MultiTaskLearner, b: MultiTaskLearner, rtol: float = 1e-5) -> None:
    state_a, state_b = a._backend.state(), b._backend.state()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        scale = max(np.abs(state_a[name]).max(initial=0.0), 1e-8)
        assert np.abs(state_a[name] - state_b[name]).max(initial=0.0) <= rtol * scale, name


def assert_same_predictions(a: MultiTaskLearner, b: MultiTaskLearner, observations) -> None:
    for obs in observations:
        pa, pb = a.predict_one(obs.x), b.predict_one(obs.x)
        assert pa["b"] == pb["b"] and pa["c"] == pb["c"]
        assert pa["a"] == pytest.approx(pb["a"], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_both_backends_reach_the_same_parameters_after_1000_learn_one_steps(optimizer):
    numpy_model, torch_model = _model("numpy", optimizer), _model("torch", optimizer)
    observations = _stream(1000)
    for obs in observations:
        numpy_model.learn_one(obs.x, obs.y)
        torch_model.learn_one(obs.x, obs.y)
    assert_same_parameters(numpy_model, torch_model)
    assert_same_predictions(numpy_model, torch_model, _stream(50, seed=9))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_both_backends_reach_the_same_parameters_after_100_learn_many_steps_of_32(optimizer):
    numpy_model, torch_model = _model("numpy", optimizer), _model("torch", optimizer)
    for X, Y in _batches(_stream(3200), 32):
        numpy_model.learn_many(X, Y)
        torch_model.learn_many(X, Y)
    assert torch_model._backend._adam_step == (100 if optimizer == "adam" else 0)
    assert_same_parameters(numpy_model, torch_model)
    X, _ = next(_batches(_stream(64, seed=9), 64))
    pd.testing.assert_frame_equal(
        numpy_model.predict_many(X).drop(columns="a"), torch_model.predict_many(X).drop(columns="a")
    )


def test_the_weighting_hooks_act_the_same_on_both_backends():
    """Per-task loss weights and trunk scales, on a batch step."""
    rng = np.random.default_rng(0)
    backends = []
    for kind in (NumpyBackend, TorchBackend):
        backend = kind(hidden=(6, 5), optimizer="adam", lr=0.01, dtype="float64")
        backend.load_trunk(initial_trunk(np.random.default_rng(1), (6, 5), "relu"))
        backend.grow_inputs(np.random.default_rng(2).normal(size=(4, 6)))
        for task, head_kind, size in [
            ("r", "regression", 1),
            ("b", "binary", 1),
            ("m", "multiclass", 3),
        ]:
            backend.set_head(task, head_kind, size)
        backends.append(backend)
    for _ in range(20):
        X = rng.normal(size=(16, 4))
        targets = np.column_stack(
            [rng.normal(size=16), rng.integers(0, 2, 16), rng.integers(0, 3, 16)]
        )
        targets[::4, 2] = np.nan
        results = [
            b.step_many(X, targets, np.array([1.0, 0.5, 2.0]), np.array([0.2, 1.0, 1.0]), True)
            for b in backends
        ]
        np.testing.assert_allclose(results[0].losses, results[1].losses, rtol=1e-9)
        np.testing.assert_allclose(results[0].gram, results[1].gram, rtol=1e-9, atol=1e-15)
    state_numpy, state_torch = (b.state() for b in backends)
    for name in state_numpy:
        np.testing.assert_allclose(state_numpy[name], state_torch[name], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("first", "second"), [("numpy", "torch"), ("torch", "numpy")])
def test_a_checkpoint_from_one_backend_loads_into_the_other_and_continues_identically(
    tmp_path, first, second
):
    original = _model(first)
    for obs in _stream(600):
        original.learn_one(obs.x, obs.y)
    original.save(tmp_path / "m.ckpt")
    switched = MultiTaskLearner.load(tmp_path / "m.ckpt", backend=second)
    assert switched.backend == second
    assert_same_predictions(original, switched, _stream(30, seed=5))
    for obs in _stream(600, seed=1):
        original.learn_one(obs.x, obs.y)
        switched.learn_one(obs.x, obs.y)
    assert_same_parameters(original, switched)


def test_a_model_can_switch_backend_mid_stream_through_a_checkpoint(tmp_path):
    """numpy learn_one for a while, then torch mini-batches, as a deployment might."""
    reference = _model("numpy")
    switching = copy.deepcopy(reference)
    head, tail = _stream(500), _stream(640, seed=2)
    for obs in head:
        reference.learn_one(obs.x, obs.y)
        switching.learn_one(obs.x, obs.y)
    switching.save(tmp_path / "m.ckpt")
    switching = MultiTaskLearner.load(tmp_path / "m.ckpt", backend="torch")
    for X, Y in _batches(tail, 32):
        reference.learn_many(X, Y)
        switching.learn_many(X, Y)
    assert switching.n_learned == reference.n_learned
    assert_same_parameters(reference, switching)


def test_warm_up_takes_torchs_first_step_aside_and_leaves_the_model_as_it_was():
    model, twin = _model("torch"), _model("torch")
    observations = _stream(64)
    for X, Y in _batches(observations[:32], 16):
        model.learn_many(X, Y)
        twin.learn_many(X, Y)
    model.warm_up()
    assert_same_parameters(model, twin, rtol=0.0)
    for X, Y in _batches(observations[32:], 16):  # and it goes on learning alike
        model.learn_many(X, Y)
        twin.learn_many(X, Y)
    assert_same_parameters(model, twin, rtol=0.0)
    assert_same_predictions(model, twin, observations[:8])


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA"):
        _model("torch", device="cuda")
    with pytest.raises(ValueError, match="no CUDA"):
        _model("torch", device="cuda:1")


def test_an_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        _model("torch", device="tpu")


def test_auto_picks_the_cpu_where_there_is_no_cuda():
    model = _model("torch", device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model._backend.device.type == expected


def test_mixed_precision_learns_nearly_as_well_as_float32():
    errors = {}
    held_out = _stream(500, seed=8)
    for mixed in (False, True):
        model = MultiTaskLearner(
            tasks={"a": Regression()}, hidden=(32, 32), backend="torch", seed=0,
            mixed_precision=mixed, lr=3e-3,
        )  # fmt: skip
        for X, Y in _batches(_stream(6400), 64):
            model.learn_many(X, Y[["a"]])
        errors[mixed] = np.mean(
            [(model.predict_one(o.x)["a"] - o.y["a"]) ** 2 for o in held_out if "a" in o.y]
        )
    assert errors[True] < 1.25 * errors[False]


def test_mixed_precision_is_refused_where_it_means_nothing(tmp_path):
    with pytest.raises(ValueError, match="backend='torch'"):
        MultiTaskLearner(tasks={"y": Regression()}, mixed_precision=True)
    with pytest.raises(ValueError, match="float32"):
        MultiTaskLearner(tasks={"y": Regression()}, backend="torch", dtype="float64",
                         mixed_precision=True)  # fmt: skip
    model = MultiTaskLearner(tasks={"y": Regression()}, backend="torch", mixed_precision=True)
    model.learn_one({"a": 1.0}, {"y": 2.0})
    model.save(tmp_path / "m.ckpt")
    assert MultiTaskLearner.load(tmp_path / "m.ckpt", backend="numpy").mixed_precision is False


def test_the_torch_backend_passes_rivers_check_estimator():
    from river import checks

    checks.check_estimator(
        MultiTaskLearner(tasks={"y": Regression()}, hidden=(8,), backend="torch", seed=0)
    )


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_gpu_reaches_the_cpu_parameters(optimizer):
    cpu, gpu = _model("numpy", optimizer), _model("torch", optimizer, device="cuda")
    for X, Y in _batches(_stream(3200), 32):
        cpu.learn_many(X, Y)
        gpu.learn_many(X, Y)
    assert_same_parameters(cpu, gpu)


@pytest.mark.cuda
@CUDA
def test_a_gpu_checkpoint_loads_on_the_cpu(tmp_path):
    gpu = _model("torch", device="cuda")
    for X, Y in _batches(_stream(320), 32):
        gpu.learn_many(X, Y)
    gpu.save(tmp_path / "m.ckpt")
    cpu = MultiTaskLearner.load(tmp_path / "m.ckpt", backend="numpy", device="cpu")
    assert_same_predictions(gpu, cpu, _stream(20, seed=3))
