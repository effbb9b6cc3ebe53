"""Shared fixtures: small seeded models and streams."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from stream_mtl import Binary, Multiclass, MultiTaskLearner, Regression


def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll `condition` every 20 ms until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def predict_while_learning(
    service,
    record: Callable[[], object],
    learn: Callable[[Callable[[Callable[[object], bool]], None]], None],
    readers: int = 8,
) -> list:
    """Eight threads `record()` predictions every 0.5 ms while this one runs `learn()`
    (which should close the service); what they recorded. Any error in a reader fails.

    `learn` is given `until_recorded(matches)`, which waits until a reader has recorded
    something that `matches`: a learner that pauses on it is sure to be seen at that
    point however busy the machine is."""
    seen: list[list] = [[] for _ in range(readers)]
    errors: list[BaseException] = []
    done = threading.Event()

    def read(out: list) -> None:
        try:
            while not done.is_set():
                out.append(record())
                time.sleep(0.0005)  # requests arrive; they do not spin
        except BaseException as error:  # fails the assertion below
            errors.append(error)

    scanned = [0] * readers

    def recorded(matches: Callable[[object], bool]) -> bool:
        for i, out in enumerate(seen):
            end = len(out)
            if any(matches(r) for r in out[scanned[i] : end]):
                return True
            scanned[i] = end
        return False

    def until_recorded(matches: Callable[[object], bool]) -> None:
        scanned[:] = [0] * readers
        wait_for(lambda: bool(errors) or recorded(matches))

    threads = [threading.Thread(target=read, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    try:
        learn(until_recorded)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    return [record for out in seen for record in out]


def model_state(model: MultiTaskLearner) -> dict:
    """Everything a learner has learned, as plain data, for bit-identical comparisons."""
    meta, arrays = model._state()
    return {"meta": copy.deepcopy(meta), "arrays": {k: v.copy() for k, v in arrays.items()}}


def assert_same_state(a: dict, b: dict) -> None:
    assert a["meta"] == b["meta"]
    assert a["arrays"].keys() == b["arrays"].keys()
    for name in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][name], b["arrays"][name], err_msg=name)


def mixed_tasks() -> dict:
    return {"price": Regression(), "churn": Binary(), "segment": Multiclass()}


def mixed_observation(rng: np.random.Generator) -> tuple[dict, dict]:
    x = {"a": float(rng.normal()), "b": float(rng.normal()), "plan": str(rng.choice(["x", "y"]))}
    y = {
        "price": 100.0 + 10.0 * x["a"],
        "churn": bool(x["b"] > 0),
        "segment": "hi" if x["a"] + x["b"] > 0 else "lo",
    }
    return x, y


@pytest.fixture
def trained_model() -> MultiTaskLearner:
    rng = np.random.default_rng(0)
    model = MultiTaskLearner(tasks=mixed_tasks(), hidden=(8,), seed=0)
    for _ in range(50):
        model.learn_one(*mixed_observation(rng))
    return model


@pytest.fixture(scope="session")
def kafka():
    """A real Kafka broker for the session (see tests/kafka_broker.py); never skipped:
    a broker that cannot start fails the tests that need it."""
    from kafka_broker import running_broker

    with running_broker() as broker:
        yield broker


@pytest.fixture
def fresh_python():
    """Run Python code in a new interpreter; return what it printed (it must succeed)."""

    def run(code: str) -> str:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    return run
