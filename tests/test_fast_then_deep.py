"""The default model: fast (second-order linear heads) early, deep later, mixed by Hedge."""

from __future__ import annotations

import numpy as np
import pytest

from stream_mtl import Binary, MultiTaskLearner, Regression
from stream_mtl.evaluate import SecondOrderLinear


def _linear_and_nonlinear(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u = rng.normal(size=4)
        x = {f"u{j}": float(v) for j, v in enumerate(u)}
        linear = float(u @ [1.0, -2.0, 0.5, 1.5] + 0.1 * rng.normal())
        bumpy = float(np.sin(3.0 * u[0]) * u[1] + np.abs(u[2]) + 0.1 * rng.normal())
        yield x, {"linear": linear, "bumpy": bumpy}


def _model() -> MultiTaskLearner:
    return MultiTaskLearner(
        tasks={"linear": Regression(), "bumpy": Regression()}, hidden=(32, 32), seed=0
    )


def test_a_short_stream_is_learned_as_well_as_by_the_second_order_linear_model():
    model = _model()
    linear = SecondOrderLinear(model)
    errors = {"model": 0.0, "linear": 0.0}
    for x, y in _linear_and_nonlinear(300):
        for name, contender in (("model", model), ("linear", linear)):
            errors[name] += (contender.predict_one(x)["linear"] - y["linear"]) ** 2
            contender.learn_one(x, y)
    assert errors["model"] <= 1.05 * errors["linear"]


def _linear_share(weights: dict[str, float]) -> float:
    return sum(w for head, w in weights.items() if head.startswith("linear"))


def test_the_mixture_moves_to_the_deep_heads_where_the_target_is_not_linear():
    model = _model()
    for x, y in _linear_and_nonlinear(4000):
        model.learn_one(x, y)
    assert _linear_share(model.mixture["linear"]) > 0.5  # the linear heads keep it
    assert _linear_share(model.mixture["bumpy"]) < 0.2  # the deep heads took the bumpy one
    floor = model.hedge_floor / len(model.mixture["linear"])
    assert min(min(weights.values()) for weights in model.mixture.values()) >= floor - 1e-12


def test_a_drift_moves_the_drifting_tasks_mixture_to_its_fast_linear_head_only():
    model = _model()
    for x, y in _linear_and_nonlinear(500):
        model.learn_one(x, y)
    before = model._backend.state()
    other = model.mixture["bumpy"]
    model._backend.restart_task(0, 0.5)
    assert model.mixture["linear"]["linear(0.99)"] >= 0.5  # the faster-forgetting one
    assert model.mixture["bumpy"] == other
    after = model._backend.state()
    for name in (k for k in before if not k.startswith("hedge.")):
        np.testing.assert_array_equal(before[name], after[name])  # nothing is reset


def _sign_flip_error(top_forgetting: tuple[float, ...]) -> float:
    """Mean squared error on "bumpy" over labels 100 to 600 after its sign flips, for a
    model trained on it for 3,000: the trunk's features still serve, only the read-out
    (and, in the first hundred labels, the target's running mean) must change."""
    model = MultiTaskLearner(
        tasks={"bumpy": Regression()}, hidden=(32, 32), seed=0, top_forgetting=top_forgetting
    )
    stream = _linear_and_nonlinear(3600)
    for _, (x, y) in zip(range(3000), stream):
        model.learn_one(x, {"bumpy": y["bumpy"]})
    errors = []
    for x, y in stream:
        errors.append((model.predict_one(x)["bumpy"] + y["bumpy"]) ** 2)
        model.learn_one(x, {"bumpy": -y["bumpy"]})
    return float(np.mean(errors[100:]))


def test_the_top_heads_read_out_the_trunk_again_faster_than_the_layer_heads():
    with_top, without = _sign_flip_error((0.999, 0.99)), _sign_flip_error(())
    assert with_top < 0.85 * without


def test_top_heads_are_part_of_the_mixture_and_of_the_state():
    model = MultiTaskLearner(tasks={"y": Regression()}, hidden=(8, 4), seed=0)
    model.learn_one({"a": 1.0}, {"y": 2.0})
    assert list(model.mixture["y"])[-2:] == ["top(0.999)", "top(0.99)"]
    state = model._backend.state()
    assert state["top1.y.cov"].shape == (1, 5, 5)  # last layer's 4 outputs and a bias
    no_trunk = MultiTaskLearner(tasks={"y": Regression()}, hidden=())
    assert not [head for head in no_trunk.mixture["y"] if head.startswith("top")]
    with pytest.raises(ValueError, match="top_forgetting"):
        MultiTaskLearner(top_forgetting=(1.5,))


def _rare_positives(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u = rng.normal(size=3)
        p = 1.0 / (1.0 + np.exp(-(2.0 * u[0] + u[1] - 5.5)))  # about 2% positives
        yield {f"u{j}": float(v) for j, v in enumerate(u)}, {"rare": bool(rng.random() < p)}


def _f1(model: MultiTaskLearner, n: int = 3000) -> tuple[float, list[float]]:
    tp = fp = fn = 0
    probabilities = []
    for x, y in _rare_positives(n):
        predicted = model.predict_one(x)["rare"]
        probabilities.append(model.predict_proba_one(x)["rare"][True])
        tp += predicted and y["rare"]
        fp += predicted and not y["rare"]
        fn += not predicted and y["rare"]
        model.learn_one(x, y)
    return 2 * tp / max(2 * tp + fp + fn, 1), probabilities


def test_rare_positives_are_predicted_with_an_f1_threshold_and_the_same_probabilities():
    tuned = MultiTaskLearner(tasks={"rare": Binary()}, hidden=(8,), seed=0)  # "f1"
    fixed = MultiTaskLearner(tasks={"rare": Binary(threshold=0.5)}, hidden=(8,), seed=0)
    f1_tuned, p_tuned = _f1(tuned)
    f1_fixed, p_fixed = _f1(fixed)
    assert p_tuned == p_fixed  # only the decision changes
    assert f1_tuned > f1_fixed + 0.1
    assert tuned.thresholds["rare"] < 0.5 and fixed.thresholds["rare"] == 0.5


def test_a_task_with_no_positive_yet_decides_by_the_other_f1_tasks_pooled_predictions():
    model = MultiTaskLearner(
        tasks={"rare": Binary(), "new": Binary(), "fixed": Binary(threshold=0.5)},
        hidden=(8,), seed=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(2000):  # rows of "rare" only (10% positives)
        u = rng.normal(size=3)
        positive = rng.random() < 1.0 / (1.0 + np.exp(-(2.0 * u[0] + u[1] - 3.0)))
        model.learn_one({f"u{j}": float(v) for j, v in enumerate(u)}, {"rare": bool(positive)})
    assert model.thresholds["new"] < 0.4  # "new" has no row: its threshold is the pooled one
    assert model.thresholds["new"] == pytest.approx(model.thresholds["rare"], abs=0.05)
    assert model.thresholds["fixed"] == 0.5


def test_the_prior_rule_decides_at_the_recent_share_of_positives():
    model = MultiTaskLearner(tasks={"rare": Binary(threshold="prior")}, hidden=(8,), seed=0)
    share = np.mean([y["rare"] for _, y in _rare_positives(3000)])
    _f1(model)
    assert model.thresholds["rare"] == pytest.approx(share, abs=0.02)


def test_a_binary_threshold_must_be_a_rule_or_a_probability():
    for bad in ("best", 0.0, 1.5, True):
        with pytest.raises(ValueError, match="threshold"):
            Binary(threshold=bad)
