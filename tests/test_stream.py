"""The stream step: what happens to one event, whoever drives it (prequential, Kafka, service)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_mtl import Binary, InvalidInput, MultiTaskLearner, Observation, Regression, UnknownKey
from stream_mtl.exceptions import UnexpectedError
from stream_mtl.pending import PendingFeatures
from stream_mtl.stream import ReasonCounts, StreamStep, features_frame, labels_frame

UNKNOWN_KEY = "labels for an unknown or expired key"


def _model(**options):
    return MultiTaskLearner(
        tasks={"a": Regression(), "flag": Binary()}, hidden=(8,), seed=0, **options
    )


def _events(n, seed=0):
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(n):
        x = {f"x{i}": float(v) for i, v in enumerate(rng.normal(size=3))}
        events.append(Observation(x, {"a": 2 * x["x0"] - x["x1"], "flag": x["x2"] > 0}))
    return events


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_features_then_labels_by_key_score_the_prediction_that_was_served():
    model = _model()
    step = StreamStep(model)
    for obs in _events(200):
        step.learn(step.offer(obs).ready)
    served = step.offer(Observation({"x0": 1.0, "x1": 0.0, "x2": 0.5}, key="k")).prediction
    for obs in _events(50, seed=1):  # the model moves on before the labels come
        step.learn(step.offer(obs).ready)
    offer = step.offer(Observation(None, {"a": 5.0}, key="k"))
    assert offer.prediction is None
    [row] = offer.ready
    assert row.x == {"x0": 1.0, "x1": 0.0, "x2": 0.5} and row.served == served
    errors_before = list(step.scorer["a"]._errors)
    step.learn(offer.ready)
    assert step.scorer["a"]._errors[-1] == pytest.approx(abs(5.0 - served["a"]))
    assert len(step.scorer["a"]._errors) == len(errors_before) + 1
    assert model.n_learned["a"] == 251


def test_a_fixed_delay_hands_back_each_labelled_event_that_many_events_later():
    events = _events(10)
    step = StreamStep(_model(), delay=3)
    ready_at = [step.offer(obs).ready for obs in events]
    assert [len(r) for r in ready_at] == [0, 0, 0] + [1] * 7
    assert ready_at[3][0].x == events[0].x
    assert [row.x for row in step.finish()] == [obs.x for obs in events[7:]]
    assert step.finish() == []


def test_labels_for_an_unknown_key_are_refused_with_one_wording_and_counted():
    step = StreamStep(_model())
    offer = step.offer(Observation(None, {"a": 1.0}, key="nobody"))
    assert isinstance(offer.refused, UnknownKey) and isinstance(offer.refused, KeyError)
    assert str(offer.refused) == "no features are held under key 'nobody' (never sent, or expired)"
    assert offer.refused.reason == UNKNOWN_KEY
    step.offer(Observation({"x0": 1.0}, key="once"))
    assert step.offer(Observation(None, {"a": 1.0}, key="once")).refused is None
    assert step.offer(Observation(None, {"a": 1.0}, key="once")).refused.reason == UNKNOWN_KEY
    assert dict(step.refused) == {UNKNOWN_KEY: 2}


def test_holds_looks_without_claiming_or_counting():
    step = StreamStep(_model())
    assert not step.holds("later") and not step.holds(["unhashable"])
    step.offer(Observation({"x0": 1.0}, key="later"))
    assert step.holds("later") and step.holds("later")  # looking claims nothing
    assert step.offer(Observation(None, {"a": 1.0}, key="later")).refused is None
    assert not step.holds("later")
    assert dict(step.refused) == {}


def test_labels_without_features_or_key_are_refused():
    offer = StreamStep(_model()).offer(Observation(None, {"a": 1.0}))
    assert "need the key their features were sent with" in str(offer.refused)


def test_held_features_expire_by_count_and_by_age_and_each_expiry_is_counted():
    clock = _Clock()
    step = StreamStep(_model(), label_wait=3, label_max_age=10.0, clock=clock)
    for key in range(5):  # keys 0 and 1 fall out: three later arrivals each
        step.offer(Observation({"x0": float(key)}, key=key))
    assert step.expired() == {"count": 2, "age": 0, "bytes": 0}
    clock.now = 11.0  # keys 2, 3 and 4 have waited too long
    assert step.offer(Observation(None, {"a": 1.0}, key=4)).refused.reason == UNKNOWN_KEY
    assert step.expired() == {"count": 2, "age": 3, "bytes": 0}
    assert len(step.pending) == 0


def test_at_most_max_pending_features_are_held_oldest_dropped_first():
    pending = PendingFeatures(max_pending=2)
    for key in "abc":
        pending.hold(key, {"f": 1.0})
    assert "a" not in pending and "b" in pending and "c" in pending
    assert pending.n_expired_by_count == 1


def test_held_features_take_at_most_max_bytes_oldest_dropped_first():
    big = {f"feature-{i}": float(i) for i in range(1000)}  # about 100 kB in Python
    pending = PendingFeatures(max_bytes=250_000)
    for key in range(10):
        pending.hold(key, dict(big))
        assert pending.n_bytes <= 250_000
    assert len(pending) == 2 and 9 in pending and 8 in pending
    assert pending.expired() == {"count": 0, "age": 0, "bytes": 8}
    pending.claim(9)
    pending.claim(8)
    assert pending.n_bytes == 0
    pending.hold("small", {"a": 1.0})
    assert 0 < pending.n_bytes < 1_000
    restored = PendingFeatures(max_bytes=250_000)
    restored.load_state(json.loads(json.dumps(pending.state())))
    assert restored.n_bytes == pending.n_bytes and restored.n_expired_by_bytes == 8


def test_held_features_and_their_served_predictions_survive_a_checkpoint_through_json():
    clock = _Clock()
    pending = PendingFeatures(max_wait=10, max_age=5.0, clock=clock)
    pending.hold(("shop", 7), {"a": 1.0}, {"price": 3.0})
    clock.now = 4.0
    pending.hold("order-2", {"a": 2.0})
    later = _Clock()  # a new process: another clock, the ages kept
    later.now = 100.0
    restored = PendingFeatures(max_wait=10, max_age=5.0, clock=later)
    restored.load_state(json.loads(json.dumps(pending.state())))
    assert restored.claim(("shop", 7)).served == {"price": 3.0}
    later.now = 101.5  # order-2 had waited 0 s at the save: 1.5 s now
    assert restored.claim("order-2").x == {"a": 2.0}
    assert len(restored) == 0 and restored.n_expired == 0


def test_a_refused_event_leaves_the_model_and_the_held_features_unchanged():
    model = _model()
    step = StreamStep(model)
    for obs in _events(100):
        step.learn(step.offer(obs).ready)
    step.offer(Observation({"x0": 1.0}, key="held"))
    probe = {"x0": 0.3, "x1": -1.0, "x2": 2.0}
    before = (model.predict_one(probe), model.n_learned, len(step.pending))
    refusals = [
        Observation({"x0": float("nan")}, {"a": 1.0}),
        Observation({"x0": 1.0}, {"flag": "maybe"}),
        Observation({"x0": 1.0}, {"margin": 1.0}),
        Observation(None, {"a": "high"}, key="held"),  # checked before the key is claimed
        "not an event",
    ]
    for event in refusals:
        offer = step.offer(event)
        assert isinstance(offer.refused, InvalidInput) and offer.ready == ()
    assert (model.predict_one(probe), model.n_learned, len(step.pending)) == before
    assert sum(step.refused.values()) == len(refusals)
    assert "held" in step.pending


@pytest.mark.parametrize("batch", [False, True])
def test_a_batch_equals_its_rows_offered_one_by_one_in_statistics(batch):
    events = _events(60)
    events[5] = Observation({"x0": float("nan")}, {"a": 1.0})
    events[9] = Observation({"x0": 2.0, "x1": 1.0}, key="late")
    events[30] = Observation(None, {"a": 3.0}, key="late")
    events[31] = Observation(None, {"a": 3.0}, key="never")
    events[40] = Observation({"x0": 1.0}, key=["not", "hashable"])
    one_by_one, many = StreamStep(_model(), batch=batch), StreamStep(_model(), batch=batch)
    offers = [one_by_one.offer(event) for event in events]
    one_by_one.learn([row for offer in offers for row in offer.ready])
    batched = many.offer_many(events)
    many.learn([row for offer in batched for row in offer.ready])
    assert [o.refused is None for o in offers] == [o.refused is None for o in batched]
    assert [len(o.ready) for o in offers] == [len(o.ready) for o in batched]
    assert dict(one_by_one.refused) == dict(many.refused)
    assert one_by_one.model.n_learned == many.model.n_learned == {"a": 56, "flag": 55}
    assert one_by_one.n_predicted == many.n_predicted == 57  # 60, less 1 refused, 2 labels
    assert len(one_by_one.scorer["a"]._errors) == len(many.scorer["a"]._errors)
    for one, other in zip(offers, batched):  # the batch is predicted before it is learned
        if one.prediction is not None:
            assert one.prediction["a"] == pytest.approx(other.prediction["a"])


def test_a_batch_whose_columns_mix_types_is_learned_row_by_row():
    step = StreamStep(_model(), batch=True)
    events = [Observation({"size": 1.0}, {"a": 1.0}), Observation({"size": "big"}, {"a": 2.0})]
    assert step.learn([row for offer in step.offer_many(events) for row in offer.ready]) == []
    assert step.model.n_learned["a"] == 2


def test_refusal_reasons_are_bounded():
    counts = ReasonCounts(max_reasons=2)
    for task in "abcd":
        counts.add(f"unknown task {task!r}")
    assert dict(counts) == {"unknown task 'a'": 1, "unknown task 'b'": 1, "other reasons": 2}


def test_a_batch_frame_keeps_bools_as_indicators_not_numbers():
    frame = features_frame([{"a": 1.0, "flag": True}, {"a": 2.0, "flag": False}])
    assert frame["flag"].dtype == bool
    assert features_frame([{"a": 1.0}, {"a": 2}])["a"].dtype == float


def test_a_labels_frame_has_a_column_per_task_named_and_a_gap_where_absent():
    frame = labels_frame([{"a": 1.0}, {"b": "x"}])
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].isna().tolist() == [False, True]
    assert frame["b"].isna().tolist() == [True, False]


def _faulty_model():
    """A real model with a fault injected: it raises on any row with the feature "boom"."""
    model = _model()
    learn_one = model.learn_one

    def learn_or_raise(x, y):
        if "boom" in x:
            raise RuntimeError("boom")
        learn_one(x, y)

    model.learn_one = learn_or_raise
    return model


def test_an_unexpected_error_surfaces_unless_the_driver_contains_it():
    events = [*_events(3), Observation({"x0": 1.0, "boom": 1.0}, {"a": 1.0}), *_events(2, seed=1)]
    step = StreamStep(_faulty_model())
    ready = [row for event in events for row in step.offer(event).ready]
    with pytest.raises(RuntimeError, match="boom"):
        step.learn(ready)
    contained = StreamStep(_faulty_model(), contain_errors=True)
    ready = [row for event in events for row in contained.offer(event).ready]
    [(row, error)] = contained.learn(ready)
    assert "boom" in row.x and str(error) == "the model raised RuntimeError: boom"
    assert isinstance(error, UnexpectedError) and isinstance(error.__cause__, RuntimeError)
    assert contained.model.n_learned["a"] == 5
    assert dict(contained.refused) == {"the model raised RuntimeError": 1}
