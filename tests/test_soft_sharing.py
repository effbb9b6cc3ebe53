"""Soft parameter sharing: a trunk per task, pulled toward the tasks' mean trunk."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.exceptions import InvalidInput
from stream_mtl.predictor import Snapshot
from stream_mtl.weighting import DriftAware, Equal, GradNorm

KINDS = {"a": "regression", "b": "binary", "c": "multiclass"}


def _soft(strength: float = 10.0, backend: str = "numpy", **params) -> MultiTaskLearner:
    params = {"dtype": "float64", "seed": 0, "hidden": (16, 8), "sharing": "soft", **params}
    tasks = {"a": Regression(), "b": Binary(), "c": Multiclass()}
    return MultiTaskLearner(tasks=tasks, backend=backend, soft_strength=strength, **params)


def _stream(n: int, seed: int = 0, label_share: float = 0.67):
    return list(SyntheticStream(tasks=KINDS, n=n, label_share=label_share, seed=seed))


def _learn(model: MultiTaskLearner, observations) -> MultiTaskLearner:
    for obs in observations:
        model.learn_one(obs.x, obs.y)
    return model


def test_strength_zero_gives_each_task_the_model_it_would_have_alone():
    observations = _stream(600)
    soft = _learn(_soft(0.0, weighting=Equal()), observations)
    for task, spec in (("a", Regression()), ("b", Binary())):
        alone = MultiTaskLearner(
            tasks={task: spec}, hidden=(16, 8), dtype="float64", seed=0, weighting=Equal()
        )
        for obs in observations:  # every row: the features' scaling sees them all
            alone.learn_one(obs.x, {task: obs.y[task]} if task in obs.y else {})
        for obs in _stream(30, seed=9):
            together = soft.predict_proba_one(obs.x) if task == "b" else soft.predict_one(obs.x)
            single = alone.predict_proba_one(obs.x) if task == "b" else alone.predict_one(obs.x)
            expected = single[task][True] if task == "b" else single[task]
            got = together[task][True] if task == "b" else together[task]
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_the_pull_draws_the_trunks_together_and_a_full_pull_makes_them_one():
    observations = _stream(400)
    spreads = [_learn(_soft(s), observations)._backend.trunk_spread() for s in (0.0, 10.0, 100.0)]
    assert spreads[0] > 3 * spreads[1] > 0
    assert spreads[1] > 3 * spreads[2] > 0
    full = _learn(_soft(1.0 / 1e-3), observations)  # lr * strength = 1: the mean each step
    assert full._backend.trunk_spread() < 1e-12


def test_at_full_strength_the_one_trunk_moves_by_every_tasks_step_as_under_hard_sharing():
    """With SGD, the trunk hard sharing would step by the tasks' summed gradient."""
    import copy

    from stream_mtl.backends.init import initial_trunk
    from stream_mtl.backends.numpy import NumpyBackend
    from stream_mtl.backends.soft import SoftSharing

    def member() -> NumpyBackend:
        return NumpyBackend(hidden=(4,), optimizer="sgd", lr=0.05, dtype="float64")

    backend = SoftSharing(member, strength=1 / 0.05)  # the consensus after every step
    backend.load_trunk(initial_trunk(np.random.default_rng(0), (4,), "relu"))
    backend.grow_inputs(np.random.default_rng(1).normal(size=(2, 4)))
    for task in ("a", "b", "c"):
        backend.set_head(task, "regression", 1)
    rng = np.random.default_rng(0)
    ones = np.ones(3)
    for _ in range(20):
        x = rng.normal(size=2)
        backend.step_one(x, [x[0], x[0] * x[1], np.nan], ones, ones)  # "c" unlabelled
    x, targets = rng.normal(size=2), np.array([0.5, -1.0, np.nan])
    trunk = backend._trunks()[0].copy()
    steps = []
    for k in (0, 1):  # each labelled task's step alone, from the same state
        alone = copy.deepcopy(backend.members[k])
        alone.step_many(x[None, :], targets[None, k : k + 1], ones[:1], ones[:1])
        steps.append(alone._param[alone.trunk_span] - trunk)
    backend.step_one(x, targets, ones, ones)
    for moved in backend._trunks():
        np.testing.assert_allclose(moved, trunk + steps[0] + steps[1], rtol=0, atol=1e-14)
    assert np.abs(steps[0]).max() > 1e-4 and np.abs(steps[1]).max() > 1e-4


def test_a_task_added_later_starts_from_the_tasks_mean_trunk():
    model = _learn(_soft(10.0), _stream(300))
    backend = model._backend
    states = [member.state() for member in backend.members]
    trunk = [name for name in states[0] if name.startswith("param.trunk.")]
    assert len(trunk) == 4  # two layers' weights and biases
    model.add_task("d", Regression())
    new = backend.members[-1].state()
    for name in trunk:
        np.testing.assert_allclose(new[name], np.mean([s[name] for s in states], axis=0))
    assert list(model.mixture) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_both_backends_learn_the_same_soft_model(optimizer):
    observations = _stream(400)
    numpy_model = _learn(_soft(10.0, "numpy", optimizer=optimizer), observations)
    torch_model = _learn(_soft(10.0, "torch", optimizer=optimizer), observations)
    state_n, state_t = numpy_model._backend.state(), torch_model._backend.state()
    assert state_n.keys() == state_t.keys()
    for name in state_n:
        scale = max(np.abs(state_n[name]).max(initial=0.0), 1e-8)
        assert np.abs(state_n[name] - state_t[name]).max(initial=0.0) <= 1e-6 * scale, name
    X = pd.DataFrame([obs.x for obs in _stream(40, seed=9)])
    pd.testing.assert_frame_equal(
        numpy_model.predict_many(X).drop(columns="a"), torch_model.predict_many(X).drop(columns="a")
    )
    np.testing.assert_allclose(
        numpy_model.predict_many(X)["a"], torch_model.predict_many(X)["a"], rtol=1e-6
    )


def test_mini_batches_learn_a_soft_model_as_well_as_a_hard_one():
    observations = _stream(2000, label_share=1.0)
    errors = {}
    for sharing in ("soft", "hard"):
        model = _soft(10.0, "torch") if sharing == "soft" else _soft(10.0, "torch", sharing="hard")
        for i in range(0, 1600, 32):
            chunk = observations[i : i + 32]
            X, Y = pd.DataFrame([o.x for o in chunk]), pd.DataFrame([o.y for o in chunk])
            model.learn_many(X, Y)
        held_out = observations[1600:]
        errors[sharing] = np.mean([abs(model.predict_one(o.x)["a"] - o.y["a"]) for o in held_out])
        if sharing == "soft":
            assert [member._adam_step for member in model._backend.members] == [50, 50, 50]
    assert errors["soft"] == pytest.approx(errors["hard"], rel=0.05)


@pytest.mark.parametrize("target", ["numpy", "torch"])
def test_a_soft_checkpoint_loads_into_either_backend_and_continues_identically(tmp_path, target):
    observations = _stream(500)
    model = _learn(_soft(10.0), observations[:300])
    model.save(tmp_path / "soft.ckpt")
    loaded = MultiTaskLearner.load(tmp_path / "soft.ckpt", backend=target)
    assert loaded.sharing == "soft" and loaded.soft_strength == 10.0
    _learn(model, observations[300:])
    _learn(loaded, observations[300:])
    for obs in _stream(20, seed=5):
        assert loaded.predict_one(obs.x)["a"] == pytest.approx(model.predict_one(obs.x)["a"])


def test_a_snapshot_of_a_soft_model_predicts_as_it_did_and_pickles():
    model = _learn(_soft(10.0), _stream(200))
    snapshot = pickle.loads(pickle.dumps(Snapshot(model)))
    held_out = _stream(10, seed=4)
    before = [model.predict_one(obs.x) for obs in held_out]
    _learn(model, _stream(100, seed=6))
    assert [snapshot.predict_one(obs.x) for obs in held_out] == before
    assert all(head.cov is None for m in snapshot._backend.members for head in m.linear)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns of the overflow
def test_a_step_that_breaks_a_member_is_undone():
    model = _soft(10.0, optimizer="sgd", lr=1e38, dtype="float32")
    _learn(model, _stream(100))
    assert model.rolled_back["rollbacks"] > 0
    assert model._backend.finite()
    assert all(np.isfinite(a).all() for a in model._backend.state().values())


def test_weighting_and_drift_work_unchanged_with_soft_sharing():
    model = _soft(10.0, weighting=DriftAware(GradNorm()))
    _learn(model, _stream(300))
    weights = model.task_weights
    assert set(weights) == {"a", "b", "c"} and all(np.isfinite(list(weights.values())))
    assert len({round(w, 6) for w in weights.values()}) > 1  # GradNorm saw the gradients
    assert set(model.mixture["a"]) == {
        "linear(0.999)", "linear(0.99)", "shared", "layer1", "layer2", "top(0.999)", "top(0.99)"
    }  # fmt: skip


def test_the_soft_gram_is_each_tasks_own_gradient_at_its_trunk():
    model = _soft(10.0, weighting=GradNorm())
    _learn(model, _stream(50, label_share=1.0))
    obs = _stream(1, seed=3, label_share=1.0)[0]
    encoded = model._encoder.transform_one(obs.x)
    targets = model._outputs.targets_one(model._outputs.check_labels(obs.y))
    result = model._backend.step_one(encoded, targets, np.ones(3), np.ones(3), gram=True)
    vectors = result.task_gradients[0]
    np.testing.assert_allclose(result.gram, vectors @ vectors.T)
    assert (np.diagonal(result.gram) > 0).all()


def test_the_task_gradients_a_backend_reports_make_up_its_gram_matrix():
    model = MultiTaskLearner(
        tasks={"a": Regression(), "c": Multiclass()}, hidden=(8,), dtype="float64", seed=0
    )
    observations = [
        type(obs)(obs.x, {t: obs.y[t] for t in "ac"}) for obs in _stream(54, label_share=1.0)
    ]
    _learn(model, observations[:50])  # c has its three classes by now
    backend = model._backend
    backend.report_task_gradients = True
    rows = observations[50:]
    X = np.array([model._encoder.transform_one(obs.x) for obs in rows])
    targets = np.array(
        [model._outputs.targets_one(model._outputs.check_labels(obs.y)) for obs in rows], float
    )
    result = backend.step_many(X, targets, np.ones(2), np.ones(2), gram=True)
    assert result.task_gradients.shape == (4, 2, 8)
    np.testing.assert_allclose(
        result.gram, np.einsum("rkw,rlw->kl", result.task_gradients, result.task_gradients)
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sharing": "medium"}, "unknown sharing"),
        ({"sharing": "soft", "hidden": ()}, "needs a trunk"),
        ({"sharing": "soft", "soft_strength": -1.0}, "soft_strength"),
        ({"sharing": "soft", "soft_strength": float("nan")}, "soft_strength"),
    ],
)
def test_bad_sharing_settings_are_clear_errors(params, message):
    with pytest.raises(InvalidInput, match=message):
        MultiTaskLearner(**params)
