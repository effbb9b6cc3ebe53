"""Model averaging (stream_mtl.averaging) and the schema workers share (learner.unseen,
learner.register): merged states against one learner that saw everything."""

from __future__ import annotations

import numpy as np
import pytest

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression
from stream_mtl.averaging import merge_states
from stream_mtl.learner import Schema


def new_model(**options) -> MultiTaskLearner:
    tasks = {"price": Regression(), "churn": Binary(), "segment": Multiclass()}
    return MultiTaskLearner(tasks=tasks, hidden=(8,), seed=0, **options)


def rows(n: int, seed: int, extra: str | None = None) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = {
            "a": float(rng.normal()),
            "b": float(rng.normal()),
            "plan": str(rng.choice(["p", "q"])),
        }
        if extra:
            x[extra] = float(rng.normal())
        y = {
            "price": 100.0 + 10.0 * x["a"] + float(rng.normal()),
            "churn": bool(x["b"] > 0),
            "segment": str(rng.choice(["lo", "mid", "hi"])),
        }
        out.append((x, y))
    return out


def learn_in_step(workers: list[MultiTaskLearner], shares: list[list]) -> None:
    """Each worker learns its share, first registering every worker's new schema in
    rank order (what the distributed loop does after each poll)."""
    schemas = [
        w.unseen([x for x, _ in share], [y for _, y in share]) for w, share in zip(workers, shares)
    ]
    for worker in workers:
        for schema in schemas:
            worker.register(schema)
    for worker, share in zip(workers, shares):
        for x, y in share:
            worker.learn_one(x, y)


def test_counts_and_running_moments_are_those_of_every_observation():
    base = new_model()
    workers = [new_model(), new_model()]
    shares = [rows(120, seed=1), rows(80, seed=2)]
    learn_in_step(workers, shares)
    meta, arrays = merge_states(base._state(), [w._state() for w in workers])
    everything = shares[0] + shares[1]
    prices = np.array([y["price"] for _, y in everything])
    assert meta["n_learned"] == [200, 200, 200]
    assert meta["n_steps"] == 200
    assert arrays["targets.count"][0] == 200
    assert arrays["targets.mean"][0] == pytest.approx(prices.mean(), rel=1e-12)
    assert arrays["targets.m2"][0] / 200 == pytest.approx(prices.var(), rel=1e-9)
    a = np.array([x["a"] for x, _ in everything])
    column = workers[0]._encoder.names.index("a")
    assert arrays["encoder.moments.mean"][column] == pytest.approx(a.mean(), rel=1e-12)


def test_a_second_round_adds_only_what_each_worker_learned_since_the_merge():
    workers = [new_model(), new_model()]
    learn_in_step(workers, [rows(50, seed=1), rows(50, seed=2)])
    first = merge_states(new_model()._state(), [w._state() for w in workers])
    workers = [MultiTaskLearner._from_state(*first, None, None) for _ in range(2)]
    learn_in_step(workers, [rows(30, seed=3), rows(70, seed=4)])
    meta, arrays = merge_states(first, [w._state() for w in workers])
    prices = [
        y["price"] for seed, n in ((1, 50), (2, 50), (3, 30), (4, 70)) for _, y in rows(n, seed)
    ]
    assert meta["n_learned"] == [200, 200, 200]
    assert arrays["targets.mean"][0] == pytest.approx(np.mean(prices), rel=1e-12)
    # Flags are the schema's, not counts: still 1 for every scaled feature after two merges.
    np.testing.assert_array_equal(arrays["encoder.scaled"], first[1]["encoder.scaled"])


def test_weights_are_averaged_and_counters_added():
    workers = [new_model(), new_model()]
    learn_in_step(workers, [rows(40, seed=1), rows(40, seed=2)])
    states = [w._state() for w in workers]
    _, arrays = merge_states(new_model()._state(), states)
    name = "backend.param.trunk.0.weight"
    expected = (states[0][1][name].astype(float) + states[1][1][name]) / 2
    np.testing.assert_allclose(arrays[name], expected, rtol=1e-6)
    assert arrays[name].dtype == states[0][1][name].dtype
    assert arrays["backend.adam.step"] == states[0][1]["backend.adam.step"] * 2


def test_the_merged_state_loads_and_predicts():
    workers = [new_model(), new_model()]
    learn_in_step(workers, [rows(60, seed=1), rows(60, seed=2)])
    merged = MultiTaskLearner._from_state(
        *merge_states(new_model()._state(), [w._state() for w in workers]), None, None
    )
    x, _ = rows(1, seed=9)[0]
    assert set(merged.predict_one(x)) == {"price", "churn", "segment"}
    assert merged.n_learned == {"price": 120, "churn": 120, "segment": 120}


def test_features_and_classes_one_worker_meets_get_the_same_columns_on_every_worker():
    workers = [new_model(), new_model()]
    shares = [rows(20, seed=1, extra="only_here"), rows(20, seed=2, extra="only_there")]
    shares[1][0][1]["segment"] = "rare"
    learn_in_step(workers, shares)
    assert workers[0]._encoder.names == workers[1]._encoder.names
    names = workers[0]._encoder.names
    assert names.index("only_here") < names.index("only_there")  # rank order
    assert workers[0].classes["segment"] == workers[1].classes["segment"]
    assert "rare" in workers[0].classes["segment"]
    merge_states(new_model()._state(), [w._state() for w in workers])  # shapes agree


def test_unseen_changes_nothing_and_skips_what_would_be_refused():
    model = new_model()
    schema = model.unseen(
        [{"a": 1.0, "plan": "p"}, {"a": float("nan")}, "junk"], [None, None, None]
    )
    assert schema == Schema([("a", True), ("plan=p", False)], {})
    assert model._encoder.names == []
    assert not model.unseen([], [])


def test_states_of_different_schemas_are_refused():
    one, other = new_model(), new_model()
    one.learn_one({"a": 1.0}, {"price": 1.0})
    other.learn_one({"a": 1.0, "b": 2.0}, {"price": 1.0})
    with pytest.raises(ValueError, match="different"):
        merge_states(None, [one._state(), other._state()])
    with pytest.raises(ValueError, match="at least one"):
        merge_states(None, [])


@pytest.mark.parametrize(
    "options", [{"sharing": "soft"}, {"backend": "torch"}], ids=["soft", "torch"]
)
def test_every_kind_of_model_merges(options):
    workers = [new_model(**options), new_model(**options)]
    learn_in_step(workers, [rows(30, seed=1), rows(30, seed=2)])
    merged = merge_states(new_model(**options)._state(), [w._state() for w in workers])
    model = MultiTaskLearner._from_state(*merged, None, None)
    assert model.n_learned["price"] == 60


@pytest.mark.parametrize("sharing", ["hard", "soft"])
def test_a_worker_steps_with_a_multiple_of_the_models_learning_rate(sharing):
    """`_scale_lr` (a distributed loop's workers): every part of the backend steps with
    the multiple, a task added later too, and the model's state keeps its own lr; the
    scaled model's step is the one a model made with that lr takes."""
    model, twice = new_model(sharing=sharing, lr=1e-3), new_model(sharing=sharing, lr=2e-3)
    model._scale_lr(2)
    model.add_task("margin", Regression())
    twice.add_task("margin", Regression())
    backends = model._backend.members if sharing == "soft" else [model._backend]
    assert [backend.lr for backend in backends] == [2e-3] * (4 if sharing == "soft" else 1)
    for x, y in rows(30, seed=1):
        model.learn_one(x, {**y, "margin": 1.0})
        twice.learn_one(x, {**y, "margin": 1.0})
    meta, arrays = model._state()
    assert meta["params"]["lr"] == 1e-3
    _, expected = twice._state()
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
