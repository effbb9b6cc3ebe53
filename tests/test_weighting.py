"""Weighting strategies, drift-aware reweighting and task affinity, alone and in the learner."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_state, model_state
from river import drift

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import Drift, SyntheticStream
from stream_mtl.weighting import DWA, DriftAware, Equal, GradNorm, Relatedness, Uncertainty

STRATEGIES = [
    Equal,
    Uncertainty,
    DWA,
    GradNorm,
    lambda: DriftAware(GradNorm()),
    lambda: Relatedness(main=["a"]),
    lambda: DriftAware(Relatedness(main=["a"])),
]
TASKS = {"a": "regression", "b": "binary", "c": "multiclass"}


def _model(weighting, backend: str = "numpy", **params) -> MultiTaskLearner:
    tasks = {"a": Regression(), "b": Binary(), "c": Multiclass()}
    return MultiTaskLearner(
        tasks=tasks, hidden=(8,), weighting=weighting, backend=backend, seed=0, **params
    )


@pytest.mark.parametrize("make", STRATEGIES)
def test_missing_labels_never_feed_a_strategys_statistics(make):
    strategy = make()
    for task in "abc":
        strategy.add_task(task)
    for step in range(1, 200):
        strategy.update(np.array([0.5, 0.2, 1.0]), np.array([True] * 3), step, np.ones(3))
    before = strategy.state()
    losses = np.array([1e6, np.nan, 1e6])
    strategy.update(losses, np.array([False, False, False]), 200, np.full(3, 1e6))
    after = strategy.state()
    assert before[0] == after[0]
    for name in before[1]:
        np.testing.assert_array_equal(before[1][name], after[1][name], err_msg=name)


@pytest.mark.parametrize("make", STRATEGIES)
def test_every_strategy_gives_one_positive_weight_per_task_in_the_learner(make):
    model = _model(make())
    for obs in SyntheticStream(tasks=TASKS, n=600, label_share=0.67, seed=3):
        model.learn_one(obs.x, obs.y)
    weights = model.task_weights
    assert list(weights) == ["a", "b", "c"]
    assert all(np.isfinite(w) and w > 0 for w in weights.values())


@pytest.mark.parametrize("make", STRATEGIES)
def test_every_strategy_acts_the_same_on_both_backends(make):
    models = [_model(make(), backend, dtype="float64") for backend in ("numpy", "torch")]
    for obs in SyntheticStream(tasks=TASKS, n=400, label_share=0.67, seed=4):
        for model in models:
            model.learn_one(obs.x, obs.y)
    weights = [list(m.task_weights.values()) for m in models]
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-6)
    affinity = [m.task_affinity.to_numpy() for m in models]
    np.testing.assert_allclose(affinity[0], affinity[1], rtol=1e-6, atol=1e-9)


def test_uncertainty_gives_less_weight_to_the_noisier_task():
    model = MultiTaskLearner(
        tasks={"clean": Regression(), "noisy": Regression()}, hidden=(16,), seed=0,
        weighting=Uncertainty(lr=0.02),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(3000):
        x = {"u": float(rng.normal())}
        y = {"clean": 2 * x["u"], "noisy": 2 * x["u"] + 3 * float(rng.normal())}
        model.learn_one(x, y)
    assert model.task_weights["clean"] > 3 * model.task_weights["noisy"]


def test_gradnorm_moves_weight_towards_the_task_that_learns_slowest():
    model = MultiTaskLearner(
        tasks={"easy": Regression(), "hard": Regression()}, hidden=(16,), seed=0,
        weighting=GradNorm(),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(3000):
        x = {f"u{i}": float(v) for i, v in enumerate(rng.normal(size=4))}
        hard = np.sin(3 * x["u0"]) * np.cos(3 * x["u1"]) + x["u2"] * x["u3"]
        model.learn_one(x, {"easy": x["u0"], "hard": float(hard)})
    assert model.task_weights["hard"] > model.task_weights["easy"]


def _drifting_stream(n: int, at: int | None, seed: int = 0):
    drifts = [Drift("d", at)] if at is not None else []
    tasks = dict.fromkeys("abcd", "regression")
    return SyntheticStream(tasks=tasks, drifts=drifts, n=n, seed=seed)


def _learner(**params) -> MultiTaskLearner:
    tasks = {t: Regression() for t in "abcd"}
    return MultiTaskLearner(tasks=tasks, hidden=(32, 32), seed=0, **params)


def test_a_drift_is_detected_in_the_drifting_task_soon_and_only_there():
    model = _learner()
    events = []
    model.on_drift(events.append)
    weights_after = mixture_at_event = None
    for i, obs in enumerate(_drifting_stream(7000, at=5000)):
        model.learn_one(obs.x, obs.y)
        if model.drift_events and mixture_at_event is None:
            mixture_at_event = model.mixture["d"]
        if i == 5200:
            weights_after = model._weighting.step_weights()
    assert [e.task for e in model.drift_events] == ["d"]
    (event,) = model.drift_events
    assert 5000 < event.step < 5000 + 300
    assert event.detector == "ADWIN"
    assert events == model.drift_events  # the callback saw it
    assert mixture_at_event["linear(0.99)"] < 0.1  # the mixture is left to Hedge
    assert weights_after.trunk[3] == 0.25 and list(weights_after.trunk[:3]) == [1.0, 1.0, 1.0]
    final = model._weighting.step_weights()
    assert final.trunk[3] == 1.0  # relaxed back


def test_a_mixture_shift_moves_the_drifted_tasks_mixture_onto_its_fast_linear_head():
    model = _learner(weighting=DriftAware(mixture_shift=0.5))
    before = after = None
    for obs in _drifting_stream(7000, at=5000):
        mixture = model.mixture["d"]
        model.learn_one(obs.x, obs.y)
        if model.drift_events:
            before, after = mixture, model.mixture["d"]
            break
    assert before is not None, "no drift detected: the test misses its case"
    assert before["linear(0.99)"] < 0.1
    assert after["linear(0.99)"] >= 0.5  # half of it, on top of what it had


def test_no_drift_is_reported_on_a_stationary_stream():
    model = _learner()
    for obs in _drifting_stream(7000, at=None):
        model.learn_one(obs.x, obs.y)
    assert model.drift_events == []


def test_a_per_task_detector_overrides_the_default():
    detector = drift.PageHinkley(threshold=1.0, mode="up")
    weighting = DriftAware(detector=drift.ADWIN(), detectors={"d": detector})
    model = _learner(weighting=weighting)
    for obs in _drifting_stream(6000, at=4000):
        model.learn_one(obs.x, obs.y)
    events = [e for e in model.drift_events if e.task == "d"]
    assert {e.detector for e in events} == {"PageHinkley"}
    assert any(4000 < e.step < 4300 for e in events)


def test_drift_aware_checkpoints_restore_detectors_exactly(tmp_path):
    weighting = DriftAware(GradNorm(), detectors={"d": drift.KSWIN(seed=1)}, replay=300)
    uninterrupted, interrupted = _learner(weighting=weighting), _learner(weighting=weighting)
    stream = list(_drifting_stream(5000, at=3000))
    for obs in stream[:2900]:
        uninterrupted.learn_one(obs.x, obs.y)
        interrupted.learn_one(obs.x, obs.y)
    interrupted.save(tmp_path / "m.ckpt")
    restored = MultiTaskLearner.load(tmp_path / "m.ckpt")
    for obs in stream[2900:]:
        restored.learn_one(obs.x, obs.y)
        uninterrupted.learn_one(obs.x, obs.y)
    assert restored.drift_events == uninterrupted.drift_events
    assert any(e.task == "d" for e in restored.drift_events)
    assert_same_state(model_state(restored), model_state(uninterrupted))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DriftAware(detector=drift.binary.DDM()), "continuous river.drift detector"),
        (lambda: DriftAware(detectors={"d": "ADWIN"}), "the detector of task 'd'"),
        (lambda: DriftAware(DriftAware()), "cannot wrap another DriftAware"),
        (lambda: DriftAware(base=Regression()), "base must be a weighting strategy"),
        (lambda: DriftAware(head_lr_boost=0.5), "head_lr_boost"),
        (lambda: DriftAware(trunk_damping=1.5), "0 <= trunk_damping <= 1"),
        (lambda: DriftAware(mixture_shift=-0.1), "0 <= mixture_shift <= 1"),
        (lambda: DWA(temperature=0), "temperature"),
        (lambda: DWA(fast=0.001, slow=0.01), "slow < fast"),
        (lambda: Uncertainty(lr=-1), "lr must be positive"),
        (lambda: GradNorm(alpha=-1), "alpha"),
    ],
)
def test_bad_strategy_parameters_are_clear_errors(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_task_affinity_is_high_for_tasks_of_one_structure_and_near_0_for_an_unrelated_one():
    """a, b, c and flag mix the same latent factors of x0..x19 (the synthetic stream's
    known structure); u is a non-linear function of x20..x29 alone."""
    structure = SyntheticStream(seed=0)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4000, 30))
    scores = structure.scores(X[:, :20])
    unrelated = np.tanh(X[:, 20] + X[:, 21]) - X[:, 22] * X[:, 23] + np.tanh(X[:, 24:].sum(1))
    tasks = {"a": Regression(), "b": Regression(), "c": Regression(), "flag": Binary()}
    model = MultiTaskLearner(tasks={**tasks, "u": Regression()}, hidden=(32, 32), seed=0)
    for i, row in enumerate(X):
        y = {name: 10.0 * scores[name][i, 0] for name in ("a", "b", "c")}
        y["flag"] = bool(scores["flag"][i, 0] > 0)
        y["u"] = float(unrelated[i])
        model.learn_one({f"x{j}": float(v) for j, v in enumerate(row)}, y)
    affinity = model.task_affinity
    assert list(affinity.index) == list(affinity.columns) == [*tasks, "u"]
    related = affinity.loc[list(tasks), list(tasks)].to_numpy()
    assert related.min() > 0.5, affinity.round(2)
    assert affinity.loc[list(tasks), "u"].max() < 0.1, affinity.round(2)
    np.testing.assert_allclose(affinity.to_numpy(), affinity.to_numpy().T)


def test_task_affinity_is_nan_until_it_is_first_measured():
    model = MultiTaskLearner(tasks={"a": Regression(), "b": Regression()}, hidden=(4,), seed=0)
    assert np.isnan(model.task_affinity.loc["a", "b"])
    assert model.task_affinity.loc["a", "a"] == 1.0
    for i in range(20):
        model.learn_one({"u": i / 20, "v": i % 3}, {"a": i / 10})
    assert 0.0 <= model.task_affinity.loc["a", "b"] <= 1.0


def _learned_on_every_kind(backend: str, **options) -> MultiTaskLearner:
    tasks = {"r": Regression(), "b": Binary(), "m": Multiclass(), "s": Regression()}
    options = {"hidden": (8, 6), "dtype": "float64", **options}
    model = MultiTaskLearner(tasks=tasks, seed=0, backend=backend, **options)
    rng = np.random.default_rng(0)
    for i in range(300):
        x = {f"x{j}": float(v) for j, v in enumerate(rng.normal(size=5))}
        y = {"r": x["x0"] - x["x1"], "b": x["x2"] > 0, "m": "abc"[i % 3], "s": x["x3"] ** 2}
        model.learn_one(x, y)
    return model


def _encoded_rows(model: MultiTaskLearner, n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    rows = [{f"x{j}": float(v) for j, v in enumerate(rng.normal(size=5))} for _ in range(n)]
    return np.stack([model._encoder.transform_one(x) for x in rows]).astype(float)


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        ("numpy", {}),
        ("numpy", {"activation": "tanh", "share_linear": False}),
        ("numpy", {"sharing": "soft"}),
        ("numpy", {"hidden": ()}),
        ("torch", {}),
    ],
    ids=["numpy", "tanh-unshared", "soft", "no-trunk", "torch"],
)
def test_the_input_jacobian_that_task_affinity_takes_is_the_slope_of_the_predictions(
    backend, options
):
    """Every kind of head and link (regression, binary, multiclass) through the mixture:
    against central differences of the predictions, in float64."""
    model = _learned_on_every_kind(backend, **options)
    X = _encoded_rows(model, 3)
    jacobian = model._backend.input_jacobian(X, 4)  # the first 4 of 5 inputs
    assert jacobian.shape == (3, 6, 4)  # rows x outputs (a class each) x inputs
    step = 1e-6
    slopes = np.empty_like(jacobian)
    for i in range(4):
        e = np.zeros(X.shape[1])
        e[i] = step
        ahead, behind = model._backend.forward_many(X + e), model._backend.forward_many(X - e)
        slopes[:, :, i] = (ahead - behind) / (2 * step)
    assert np.abs(slopes).max() > 0.1  # the predictions do move with the inputs
    np.testing.assert_allclose(jacobian, slopes, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_one_rows_compiled_input_jacobian_is_the_reference_one(activation, monkeypatch):
    from stream_mtl.backends import row_kernel
    from stream_mtl.backends.flat import FlatBackend

    model = _learned_on_every_kind("numpy", activation=activation)
    X = _encoded_rows(model, 1)
    assert model._backend._row_kernel  # one row: the compiled kernel
    calls: list = []
    kernel = row_kernel.row_jacobian
    monkeypatch.setattr(row_kernel, "row_jacobian", lambda *a: calls.append(1) or kernel(*a))
    compiled = model._backend.input_jacobian(X, 4)
    assert calls == [1], "the compiled kernel was not called"
    reference = FlatBackend.input_jacobian(model._backend, X, 4)
    np.testing.assert_allclose(compiled, reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("every", "max_rows"), [(16, 2), (1, 2), (3, 1), (5, 0)])
def test_due_one_picks_the_rows_due_picks(every, max_rows):
    from stream_mtl.affinity import TaskAffinity

    batched = TaskAffinity(every=every, max_rows=max_rows)
    one = TaskAffinity(every=every, max_rows=max_rows)
    for i in range(200):
        if i % 7 == 3:  # a mini-batch now and then
            assert list(batched.due(i % 5 + 2)) == list(one.due(i % 5 + 2))
        else:
            assert bool(batched.due(1).size) == one.due_one()


def test_task_affinity_takes_at_most_affinity_inputs_inputs_into_account():
    model = MultiTaskLearner(tasks={"a": Regression()}, hidden=(4,), seed=0, affinity_inputs=3)
    for i in range(40):
        model.learn_one({f"u{j}": (i * j) % 7 for j in range(10)}, {"a": i / 10})
    assert model._affinity.state()["moments"].shape == (1, 3, 3)


def test_a_gradual_drift_moves_labels_to_the_new_concept_over_its_width():
    tasks = {"a": "regression"}
    old = [obs.y["a"] for obs in SyntheticStream(tasks=tasks, n=3000, noise=0, seed=5)]
    drifting = SyntheticStream(
        tasks=tasks, n=3000, noise=0, seed=5, drifts=[Drift("a", at=1000, width=1000)]
    )
    new = [obs.y["a"] for obs in drifting]
    changed = ~np.isclose(old, new)
    assert not changed[:1000].any() and changed[2000:].all()
    assert 0.35 < changed[1000:2000].mean() < 0.65
    assert changed[1000:1200].mean() < changed[1800:2000].mean()


def test_a_drift_of_an_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="drift of unknown task 'z'"):
        SyntheticStream(drifts=[Drift("z", at=10)])
