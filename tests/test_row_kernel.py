"""One row's compiled prediction and step (`row_kernel`) against the NumPy backend's
batched code (`NumpyBackend(compiled=False)`), their reference: 1e-12 in float64 over
1,000 steps; bit-for-bit the same across runs in float32."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from stream_mtl.backends.init import initial_trunk
from stream_mtl.backends.numpy import NumpyBackend

# regression, binary and a 3-class task: every link, loss and curvature
HEADS = [("r", "regression", 1), ("b", "binary", 1), ("m", "multiclass", 3), ("s", "regression", 1)]
N_INPUTS = 6


def backend(compiled: bool, dtype: str = "float64", **options) -> NumpyBackend:
    model = NumpyBackend(hidden=(8, 5), dtype=dtype, compiled=compiled, **options)
    model.load_trunk(initial_trunk(np.random.default_rng(0), (8, 5), model.activation))
    model.grow_inputs(np.random.default_rng(1).normal(size=(N_INPUTS, 8)) * 0.5)
    for task, kind, size in HEADS:
        model.set_head(task, kind, size)
    return model


def stream(n: int, seed: int = 2):
    """Rows, targets with some tasks unlabelled, and changing task weights."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = rng.normal(size=N_INPUTS) * (3.0 if i % 97 == 0 else 1.0)
        signal = x[:3].sum()
        targets = np.array([[signal, float(signal > 0), float(int(abs(signal)) % 3), -x[4]]])
        targets[0, rng.random(4) < 0.3] = np.nan
        loss_weight = rng.uniform(0.5, 1.5, size=4)
        trunk_scale = np.where(rng.random(4) < 0.1, 0.0, rng.uniform(0.5, 1.0, size=4))
        yield x[None, :], targets, loss_weight, trunk_scale


def run(model: NumpyBackend, n: int) -> list:
    outputs = []
    for X, targets, loss_weight, trunk_scale in stream(n):
        outputs.append(model.forward_many(X))
        result = model.step_many(X, targets, loss_weight, trunk_scale)
        outputs.append(np.asarray(result.losses, float))
        outputs.append(result.predictions)
    return outputs


OPTIONS = [
    {},
    {"optimizer": "sgd", "lr": 0.01},
    {"activation": "tanh", "share_linear": False, "forgetting": (0.99,)},
    {"top_forgetting": (0.995,), "hedge_floor": 0.2},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["adam", "sgd", "tanh-unshared", "one-top"])
def test_the_compiled_row_agrees_with_numpy_over_1000_steps(options):
    compiled, reference = backend(True, **options), backend(False, **options)
    assert compiled._row_kernel and not reference._row_kernel
    ours, theirs = run(compiled, 1_000), run(reference, 1_000)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    state, expected = compiled.state(), reference.state()
    assert state.keys() == expected.keys()
    for name in state:
        np.testing.assert_allclose(
            state[name], expected[name], rtol=1e-12, atol=1e-12, err_msg=name
        )
    moved = (
        state["param.trunk.0.weight"] - backend(False, **options).state()["param.trunk.0.weight"]
    )
    assert np.abs(moved).max() > 1e-3, "the trunk never learned: the test misses the backward"
    initial = backend(False, **options).state()["hedge.alpha"]
    assert np.abs(state["hedge.alpha"] - initial).max() > 0.1, "the mixture never moved"


def test_a_float32_row_is_the_same_on_every_run():
    first, second = backend(True, "float32"), backend(True, "float32")
    ours, again = run(first, 300), run(second, 300)
    for a, b in zip(ours, again):
        assert np.array_equal(a, b, equal_nan=True)
    # and close to the float32 reference, which sums in other orders
    theirs = run(backend(False, "float32"), 300)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=1e-3, atol=1e-4)


def digest(outputs: list, model: NumpyBackend) -> str:
    """A hash of every output of a run and of the state it leaves."""
    hashed = hashlib.sha256()
    for array in [*outputs, *model.state().values()]:
        hashed.update(np.ascontiguousarray(array).tobytes())
    return hashed.hexdigest()


def test_a_float32_row_is_the_same_in_another_process(fresh_python):
    """A fresh interpreter (which loads the kernels from numba's cache) computes the same
    float32 run, bit for bit."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from test_row_kernel import backend, digest, run
model = backend(True, "float32")
print(digest(run(model, 300), model))
"""
    model = backend(True, "float32")
    assert fresh_python(code) == digest(run(model, 300), model)


def test_batches_and_the_gram_matrix_take_the_reference_path():
    """Several rows, or a step that reports the tasks' Gram matrix, are the batched
    code's; the same state either way."""
    compiled, reference = backend(True), backend(False)
    rows = list(stream(4))
    X = np.vstack([r[0] for r in rows])
    targets = np.vstack([r[1] for r in rows])
    for model in (compiled, reference):
        model.step_many(X, targets, rows[0][2], rows[0][3])
        result = model.step_many(rows[0][0], rows[0][1], rows[0][2], rows[0][3], gram=True)
        assert result.gram is not None
    for name, value in compiled.state().items():
        np.testing.assert_allclose(value, reference.state()[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_an_unpickled_or_copied_backend_learns_as_the_original(compiled):
    """Its views into the flat buffers are bound again: a copy whose views were arrays
    of their own would step them and leave its buffers (and state) where they were."""
    import copy
    import pickle

    original = backend(compiled)
    run(original, 20)
    copies = [pickle.loads(pickle.dumps(original)), copy.deepcopy(original)]
    rows = list(stream(40, seed=7))
    X = np.vstack([r[0] for r in rows[:8]])
    targets = np.vstack([r[1] for r in rows[:8]])
    for model in (original, *copies):
        model.step_many(X, targets, rows[0][2], rows[0][3])  # a batch: NumPy's path
        for x, target, loss_weight, trunk_scale in rows[8:]:
            model.step_many(x, target, loss_weight, trunk_scale)
    expected = original.state()
    assert (
        np.abs(
            expected["param.trunk.0.weight"] - backend(compiled).state()["param.trunk.0.weight"]
        ).max()
        > 1e-3
    )
    for model in copies:
        for name, value in model.state().items():
            np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_the_compiled_step_reports_what_finite_would_say():
    """The guard takes the step's own word on finiteness; it must be `finite()`'s."""
    model = backend(True, optimizer="sgd", lr=1e6)  # diverges within a few steps
    said = []
    for X, targets, loss_weight, trunk_scale in stream(60):
        with np.errstate(all="ignore"):
            result = model.step_many(X * 1e3, targets * 1e3, loss_weight, trunk_scale)
        assert result.finite == model.finite()
        said.append(result.finite)
    assert said[0] and not said[-1], "the test never saw both answers"
