"""Fuzzing (hypothesis; derandomised, so seeded, with bounded examples): whatever features,
labels, messages or request bodies come, every call succeeds or raises the library's
bad-input family (`InvalidInput`), and a rejected call leaves the model bit-identical."""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import msgpack
import numpy as np
import pandas as pd
import pytest
from conftest import assert_same_state, mixed_observation, mixed_tasks, model_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_mtl import InvalidInput, MultiTaskLearner
from stream_mtl.connectors.messages import decode_json, decode_msgpack, observation_from_message

FUZZ = settings(
    derandomize=True,  # the same examples on every run: the suite stays deterministic
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMES = st.one_of(
    st.sampled_from(["a", "b", "plan", "price", "churn", "segment"]),
    st.text(max_size=6),
    st.integers(-3, 3),
    st.just(np.int64(7)),  # a NumPy integer name: learned as the int it equals
    st.booleans(),
    st.none(),
    st.floats(),
    st.tuples(st.text(max_size=2)),
)
SCALARS = st.one_of(
    st.floats(),  # NaN, infinities, subnormals, 1e308 ...
    st.integers(-(10**400), 10**400),
    st.text(max_size=6),  # lone surrogates included
    st.booleans(),
    st.none(),
    st.sampled_from([np.float32(1.5), np.int64(3), np.bool_(True), np.float64("nan")]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
FEATURES = st.one_of(st.dictionaries(NAMES, VALUES, max_size=6), VALUES)
LABELS = st.one_of(st.dictionaries(NAMES, VALUES, max_size=4), VALUES)

_models: dict[str, MultiTaskLearner] = {}


def trained_model(name: str) -> MultiTaskLearner:
    """One small trained model per test, kept across its examples."""
    if name not in _models:
        model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(4,), seed=0, max_features=50)
        rng = np.random.default_rng(0)
        for _ in range(30):
            model.learn_one(*mixed_observation(rng))
        _models[name] = model
    return _models[name]


@FUZZ
@given(x=FEATURES, y=LABELS)
def test_learn_one_and_predict_one_accept_or_refuse_cleanly(x, y):
    model = trained_model("one")
    before = model_state(model)
    try:
        model.learn_one(x, y)
    except InvalidInput:
        assert_same_state(before, model_state(model))
    try:
        prediction = model.predict_one(x)
    except InvalidInput:
        return
    assert set(prediction) == set(model.tasks)


@FUZZ
@given(rows=st.lists(st.tuples(st.dictionaries(NAMES, SCALARS, max_size=4), LABELS), max_size=5))
def test_learn_many_accepts_or_refuses_cleanly(rows):
    model = trained_model("many")
    try:
        X = pd.DataFrame([x for x, _ in rows])
        Y = pd.DataFrame([y if isinstance(y, dict) else {} for _, y in rows])
    except Exception:  # pandas cannot build a frame of these: nothing to hand the model
        return
    before = model_state(model)
    try:
        model.learn_many(X, Y)
    except InvalidInput:
        assert_same_state(before, model_state(model))


def test_a_model_that_met_fuzzed_input_saves_and_loads(tmp_path):
    for name in ("one", "many"):
        model = trained_model(name)
        model.save(tmp_path / f"{name}.ckpt")
        assert MultiTaskLearner.load(tmp_path / f"{name}.ckpt").n_learned == model.n_learned


MESSAGES = st.one_of(
    st.binary(max_size=64),
    st.recursive(
        st.one_of(SCALARS.filter(lambda v: not isinstance(v, np.generic)), st.text(max_size=4)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=12,
    ).map(lambda value: {"x": value, "y": {"price": 1.0}, "key": value}),
    st.fixed_dictionaries({}, optional={"x": VALUES, "y": LABELS, "key": VALUES, "time": VALUES}),
)


def _encodings(message: object) -> list[tuple[bytes, object]]:
    if isinstance(message, bytes):
        return [(message, decode_json), (message, decode_msgpack)]
    encoded = []
    with contextlib.suppress(TypeError, ValueError):
        encoded.append((json.dumps(message).encode("utf-8", "surrogatepass"), decode_json))
    with contextlib.suppress(TypeError, ValueError, OverflowError, UnicodeEncodeError):
        encoded.append((msgpack.packb(message), decode_msgpack))
    return encoded


@FUZZ
@given(message=MESSAGES)
def test_the_kafka_message_decoder_reads_or_refuses_every_message(message):
    model = trained_model("messages")
    for raw, decode in _encodings(message):
        before = model_state(model)
        try:
            obs = observation_from_message(decode(raw))
            model.check_one(obs.x, obs.y)
            if obs.x is not None and obs.y is not None:
                model.learn_one(obs.x, obs.y)
        except InvalidInput:
            assert_same_state(before, model_state(model))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from serve_process import start_server, stop_server

    checkpoint = tmp_path_factory.mktemp("fuzz") / "model.ckpt"
    process, url = start_server(
        checkpoint, "price:regression", "churn:binary", "segment:multiclass",
        options=("--hidden", "4"),
    )  # fmt: skip
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client
    assert stop_server(process)


def _learned(client: httpx.Client) -> dict:
    return {
        name: task["labels_learned"] for name, task in client.get("/tasks").json()["tasks"].items()
    }


BODIES = st.one_of(
    st.binary(max_size=64),
    st.fixed_dictionaries({}, optional={"x": FEATURES, "y": LABELS, "key": VALUES}).map(
        # keys JSON cannot hold (tuples, NumPy integers) are left out; the rest goes as is
        lambda body: json.dumps(body, default=str, skipkeys=True).encode("utf-8", "surrogatepass")
    ),
)


@pytest.mark.integration
@settings(FUZZ, max_examples=100)  # each example is three HTTP round trips
@given(path=st.sampled_from(["/predict", "/learn"]), body=BODIES)
def test_the_http_app_answers_every_request_with_a_2xx_or_a_4xx(server, path, body):
    before = _learned(server)
    response = server.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert response.json()["detail"]
        time.sleep(0.001)
        assert _learned(server) == before
