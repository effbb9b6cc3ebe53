"""`stream-mtl serve` as a real server on a loopback port, talked to by a real HTTP client."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_process import start_server, stop_server

from stream_mtl import MultiTaskLearner

pytestmark = [pytest.mark.integration]

SMALL = ("--hidden", "16")


def observation(rng: np.random.Generator) -> dict:
    x = {f"x{j}": float(v) for j, v in enumerate(rng.normal(size=4))}
    return {"x": x, "y": {"a": 2.0 * x["x0"] + x["x1"], "flag": x["x2"] > 0}}


def learned(client: httpx.Client) -> dict:
    tasks = client.get("/tasks").json()["tasks"]
    return {name: task["labels_learned"] for name, task in tasks.items()}


def wait_until_learned(client: httpx.Client, count: int) -> None:
    deadline = time.monotonic() + 60
    while learned(client)["a"] < count:
        assert time.monotonic() < deadline, learned(client)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("serve") / "model.ckpt"
    process, url = start_server(checkpoint, "a:regression", "flag:binary", options=SMALL)
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client
    assert stop_server(process)


@pytest.fixture
def start():
    """`start_server` for one test; whatever it started is killed when the test ends,
    even a failed one."""
    processes = []

    def started(*args, **kwargs):
        process, url = start_server(*args, **kwargs)
        processes.append(process)
        return process, url

    yield started
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_learn_then_predict_round_trip(server):
    rng = np.random.default_rng(0)
    before = learned(server)["a"]
    for _ in range(300):
        response = server.post("/learn", json=observation(rng))
        assert response.status_code == 202, response.text
    wait_until_learned(server, before + 300)
    one = server.post("/predict", json={"x": {"x0": 1.0, "x1": 0.5, "x2": 1.0, "x3": 0.0}})
    assert one.status_code == 200
    assert set(one.json()) == {"a", "flag"} and isinstance(one.json()["flag"], bool)
    many = server.post("/predict", json={"x": [{"x0": 1.0}, {"x0": -1.0}]}).json()
    assert len(many["predictions"]) == 2


def test_tasks_show_each_tasks_mixture_of_heads(server):
    tasks = server.get("/tasks").json()["tasks"]
    for task in tasks.values():
        heads = task["mixture"]
        assert set(heads) >= {"linear(0.999)", "linear(0.99)"}
        assert sum(heads.values()) == pytest.approx(1.0)


def test_labels_sent_later_by_key_are_learned_once(server):
    before = learned(server)["a"]
    assert server.post("/predict", json={"x": {"x0": 0.3}, "key": "order-1"}).status_code == 200
    assert server.post("/learn", json={"key": "order-1", "y": {"a": 1.0}}).status_code == 202
    again = server.post("/learn", json={"key": "order-1", "y": {"a": 1.0}})
    assert again.status_code == 404 and "order-1" in again.json()["detail"]
    wait_until_learned(server, before + 1)


BAD_REQUESTS = [
    ("/predict", b"{not json", 400, "not valid JSON"),
    ("/predict", b"[1, 2]", 400, "must be a JSON object"),
    ("/predict", b'{"x": {"x0": 1}, "extra": 1}', 400, "unknown field(s) ['extra']"),
    ("/predict", b'{"x": 3}', 400, '"x" must be a non-empty object'),
    ("/predict", b'{"x": [{"x0": 1}, 5]}', 400, '"x[1]" must be a non-empty object'),
    ("/predict", b'{"x": {"x0": NaN}}', 400, "not valid JSON"),  # JSON has no NaN
    ("/predict", b'{"x": {"x0": [1]}}', 422, "feature 'x0' has a value of type list"),
    ("/learn", b'{"x": {"x0": 1}}', 400, '"y" must be a non-empty object'),
    ("/learn", b'{"x": {"x0": 1}, "y": {"margin": 1}}', 422, "unknown task 'margin'"),
    ("/learn", b'{"x": {"x0": 1}, "y": {"a": "high"}}', 422, "regression task 'a'"),
    ("/learn", b'{"x": {"x0": 1}, "y": {"flag": 7}}', 422, "binary task 'flag'"),
    ("/learn", b'{"x": {"x0": Infinity}, "y": {"a": 1}}', 400, "not valid JSON"),
    ("/learn", b'{"x": {"x0": 1e999}, "y": {"a": 1}}', 400, "number is infinity"),
    ("/learn", b'{"x": {"x0": 1}, "y": {"a": 1e300}}', 422, "beyond max_magnitude"),
    ("/learn", b'{"x": {"x\\ud800": 1}, "y": {"a": 1}}', 400, "surrogate"),
    ("/learn", b'{"x": {"x0": "\xed\xa0\x80"}, "y": {"a": 1}}', 400, "not valid UTF-8"),
    ("/learn", b"[" * 2000 + b"]" * 2000, 400, "depth limit exceeded"),
    ("/learn", b'{"x": {"' + b"n" * 1001 + b'": 1}, "y": {"a": 1}}', 422, "1001 characters"),
    ("/learn", b'{"x": {"x0": 1}, "y": {"a": 1}, "key": "' + b"k" * 1001 + b'"}', 422, "1001"),
    (
        "/predict",
        b'{"x": {' + b",".join(b'"f%d": 1' % i for i in range(1001)) + b"}}",
        413,
        '"x" has 1001 entries, more than the 1000 allowed',
    ),
    (
        "/predict",
        b'{"x": [' + b",".join([b'{"x0": 1}'] * 1001) + b"]}",
        413,
        '"x" holds 1001 rows, more than the 1000 allowed',
    ),
    (
        "/learn",
        b'{"x": {"x0": 1}, "y": {"a": 1}, "pad": "' + b" " * 1_000_000 + b'"}',
        413,
        "over the 1000000 allowed",
    ),
    ("/learn", b'{"y": {"a": 1}}', 400, 'need the "key"'),
    ("/learn", b'{"y": {"a": 1}, "key": {"id": 1}}', 400, '"key" must be a string'),
    ("/learn", b'{"y": {"a": 1}, "key": "nobody"}', 404, "'nobody'"),
]


@pytest.mark.parametrize(("path", "body", "status", "detail"), BAD_REQUESTS)
def test_a_bad_request_gets_a_4xx_naming_the_fault_and_nothing_is_learned(
    server, path, body, status, detail
):
    before = learned(server)
    response = server.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    time.sleep(0.05)
    assert learned(server) == before


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_post_that_is_not_declared_json_gets_415(server, content_type):
    """A web page's "simple" cross-origin POST (no preflight) cannot reach /learn."""
    before = learned(server)
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"x": {"x0": 1}, "y": {"a": 1}}'
    response = server.post("/learn", content=body, headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert server.post("/predict", content=body, headers=headers).status_code == 415
    ok = server.post("/learn", content=body, headers={"content-type": "application/json"})
    assert ok.status_code == 202
    wait_until_learned(server, before["a"] + 1)


def test_metrics_are_prometheus_text_with_requests_latency_queue_and_tasks(server):
    rng, before = np.random.default_rng(3), learned(server)["a"]
    for _ in range(5):  # scored, whichever tests ran before on this server
        assert server.post("/learn", json=observation(rng)).status_code == 202
    wait_until_learned(server, before + 5)
    server.post("/predict", json={"x": {"x0": 1.0}})
    for i in range(20):  # unknown paths do not grow the metrics: they are all "other"
        assert server.get(f"/no/such/path/{i}").status_code == 404
    families = {f.name: f for f in text_string_to_metric_families(server.get("/metrics").text)}
    requests = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for s in families["stream_mtl_requests"].samples
        if s.name == "stream_mtl_requests_total"
    }
    assert requests[("/predict", "200")] >= 1
    assert requests[("other", "404")] >= 20
    assert {endpoint for endpoint, _ in requests} <= {
        "/predict",
        "/learn",
        "/tasks",
        "/healthz",
        "other",
    }
    assert families["stream_mtl_request_seconds"].type == "histogram"
    assert "stream_mtl_learn_queue_depth" in families
    learned_per_task = {
        s.labels["task"]: s.value for s in families["stream_mtl_labels_learned"].samples
    }
    assert set(learned_per_task) == {"a", "flag"}
    errors = {s.labels["task"]: s.value for s in families["stream_mtl_rolling_error"].samples}
    assert set(errors) == {"a", "flag"} and all(math.isfinite(v) for v in errors.values())
    assert "stream_mtl_drift_events" in families
    loads = {s.labels["how"]: s.value for s in families["stream_mtl_snapshot_loads"].samples}
    assert set(loads) == {"copied", "unpickled"} and loads["unpickled"] >= 1
    expired = {s.labels["cause"]: s.value for s in families["stream_mtl_labels_expired"].samples}
    assert expired == {"count": 0, "age": 0, "bytes": 0}


def test_eight_threads_predict_while_one_learns_5000_requests(server):
    rng = np.random.default_rng(1)
    learns = [observation(rng) for _ in range(1000)]
    before = learned(server)["a"]
    failures: list[str] = []
    counts = [0] * 8
    done = threading.Event()

    def predict(slot: int) -> None:
        with httpx.Client(base_url=str(server.base_url), timeout=10) as client:
            while not done.is_set() and counts[slot] < 500:
                response = client.post("/predict", json={"x": learns[counts[slot]]["x"]})
                body = response.json()
                if response.status_code != 200 or not math.isfinite(body.get("a", math.nan)):
                    failures.append(f"{response.status_code} {response.text}")
                counts[slot] += 1

    threads = [threading.Thread(target=predict, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    with httpx.Client(base_url=str(server.base_url), timeout=10) as client:
        for body in learns:
            response = client.post("/learn", json=body)
            if response.status_code != 202:
                failures.append(f"{response.status_code} {response.text}")
    for thread in threads:
        thread.join()
    assert not failures[:5]
    assert sum(counts) + len(learns) == 5_000
    wait_until_learned(server, before + 1000)


def test_sigterm_checkpoints_and_a_restart_predicts_the_same(tmp_path, start):
    checkpoint = tmp_path / "model.ckpt"
    process, url = start(checkpoint, "a:regression", options=SMALL)
    rng = np.random.default_rng(2)
    probe = {"x": {"x0": 0.5, "x1": -0.2, "x2": 0.1, "x3": 1.0}}
    with httpx.Client(base_url=url) as client:
        for _ in range(200):
            body = observation(rng)
            client.post("/learn", json={"x": body["x"], "y": {"a": body["y"]["a"]}})
        wait_until_learned(client, 200)
        before = client.post("/predict", json=probe).json()
        held = client.post("/predict", json={**probe, "key": "late"}).json()
    assert stop_server(process)
    assert checkpoint.exists()

    process, url = start(checkpoint, options=SMALL)
    with httpx.Client(base_url=url) as client:
        assert learned(client) == {"a": 200}
        assert client.post("/predict", json=probe).json() == before == held
        # the features held under "late" were in the checkpoint: its label is learned
        assert client.post("/learn", json={"key": "late", "y": {"a": 1.0}}).status_code == 202
        wait_until_learned(client, 201)
    assert stop_server(process)


def test_a_sigkill_loses_no_acknowledged_learn(tmp_path, start):
    """Every 202 is in the write-ahead log: after a SIGKILL, a restart learns again what
    the last checkpoint lacks, and nothing twice."""
    checkpoint = tmp_path / "model.ckpt"
    rng = np.random.default_rng(3)
    bodies = [observation(rng) for _ in range(400)]
    labels = [body["y"]["a"] for body in bodies]

    def post(url: str, part: list[dict], then: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for body in part:
                response = client.post("/learn", json={"x": body["x"], "y": {"a": body["y"]["a"]}})
                assert response.status_code == 202
            wait_until_learned(client, then)

    process, url = start(checkpoint, "a:regression", options=SMALL)
    post(url, bodies[:200], then=200)
    assert stop_server(process)  # a checkpoint with the first 200
    process, url = start(checkpoint, options=SMALL)
    post(url, bodies[200:], then=400)  # learned, acknowledged, in no checkpoint
    process.kill()  # SIGKILL: no shutdown, no last checkpoint
    process.wait(30)

    process, url = start(checkpoint, options=SMALL)
    with httpx.Client(base_url=url) as client:
        assert learned(client) == {"a": 400}  # each acknowledged label once
    assert stop_server(process)
    logs = "".join(log.read_text() for log in tmp_path.glob("model.*.log"))
    assert "learned 200 observations again from the write-ahead log" in logs
    model = MultiTaskLearner.load(checkpoint)
    # the running mean of the labels is the exact fingerprint of which were learned
    assert model._outputs.scale.mean[0] == pytest.approx(np.mean(labels), rel=1e-12)


def test_learn_answers_503_with_the_reason_while_checkpoints_fail(tmp_path, start):
    folder = tmp_path / "models"
    folder.mkdir()
    options = (*SMALL, "--checkpoint-seconds", "0.2")
    process, url = start(folder / "model.ckpt", "a:regression", options=options)
    body = {"x": {"x0": 1.0}, "y": {"a": 1.0}}
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/learn", json=body).status_code == 202
        folder.rename(tmp_path / "away")  # a file where the folder was: saves fail
        folder.write_text("not a folder")
        deadline = time.monotonic() + 30
        while client.get("/healthz").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "checkpoint failed" in client.get("/healthz").json()["status"]
        refused = client.post("/learn", json=body)
        assert refused.status_code == 503 and "checkpoint failed" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        assert client.post("/predict", json={"x": {"x0": 1.0}}).status_code == 200
        folder.unlink()
        (tmp_path / "away").rename(folder)
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.post("/learn", json=body).status_code == 202
        wait_until_learned(client, 2)
    assert stop_server(process)


def test_learn_needs_the_bearer_token_when_one_is_set(tmp_path, start, monkeypatch):
    monkeypatch.setenv("STREAM_MTL_LEARN_TOKEN", "s3cret")  # the server inherits it
    _process, url = start(tmp_path / "model.ckpt", "a:regression", options=SMALL)
    body = {"x": {"x0": 1.0}, "y": {"a": 2.0}}
    with httpx.Client(base_url=url, timeout=10) as client:
        refused = client.post("/learn", json=body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["detail"]
        wrong = client.post("/learn", json=body, headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        right = client.post("/learn", json=body, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 202
        assert client.post("/predict", json={"x": {"x0": 1.0}}).status_code == 200
        wait_until_learned(client, 1)


def test_a_learner_process_killed_mid_stream_loses_no_acknowledged_label(tmp_path, start):
    """kill -9 of the learner while labels stream in: /healthz goes 503 with the exit
    code and comes back; predictions go on meanwhile; every label answered 202 is
    learned (the write-ahead log, on by default, holds what no checkpoint has yet), and
    none more than those refused while it died (a refused one may have reached the log)."""
    path = tmp_path / "model.ckpt"
    process, url = start(path, "a:regression", "flag:binary", options=SMALL)
    answers: list[int] = []
    stop = threading.Event()

    def post_labels() -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=url, timeout=30) as poster:
            while not stop.is_set():
                answers.append(poster.post("/learn", json=observation(rng)).status_code)

    poster = threading.Thread(target=post_labels)
    poster.start()
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            while len(answers) < 100:
                time.sleep(0.01)
            health = client.get("/healthz").json()
            learner = health["learner_pid"]
            assert learner not in (None, process.pid) and health["learner_restarts"] == 0
            os.kill(learner, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while (answer := client.get("/healthz")).status_code == 200:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert "the learner process died (exit code -9)" in answer.json()["status"]
            assert client.post("/predict", json={"x": {"x0": 1.0}}).status_code == 200
            # under a key too: served, though nothing can be held for its labels now
            keyed = client.post("/predict", json={"x": {"x0": 1.0}, "key": "while-down"})
            assert keyed.status_code == 200, keyed.text
            assert "stream_mtl_predictions_not_held 1.0" in client.get("/metrics").text
            while (answer := client.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert answer.json()["learner_restarts"] == 1
            sent = len(answers)
            while len(answers) < sent + 100:  # and it learns again
                time.sleep(0.01)
    finally:
        stop.set()
        poster.join()
    acknowledged = answers.count(202)
    refused = len(answers) - acknowledged
    assert set(answers) <= {202, 503} and refused > 0
    with httpx.Client(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 60
        while learned(client)["a"] < acknowledged:
            assert time.monotonic() < deadline, (learned(client), acknowledged)
            time.sleep(0.05)
        time.sleep(0.5)
        assert acknowledged <= learned(client)["a"] <= acknowledged + refused
    log = path.with_suffix(f".{url.rsplit(':', 1)[1]}.log").read_text()
    assert "the learner process died (exit code -9)" in log


def test_several_workers_serve_one_learner_and_sigterm_keeps_all_they_accepted(tmp_path, start):
    path = tmp_path / "model.ckpt"
    options = [*SMALL, "--workers", "2", "--learner-nice", "7", "--label-grace", "0.5"]
    process, url = start(path, "a:regression", "flag:binary", options=options)
    rng = np.random.default_rng(0)
    servers: set[int] = set()
    learners: set[int] = set()
    for _ in range(30):  # a fresh connection each: the kernel spreads them over the workers
        with httpx.Client(base_url=url, timeout=10) as client:
            health = client.get("/healthz").json()
            servers.add(health["server_pid"])
            learners.add(health["learner_pid"])
            for _ in range(10):
                assert client.post("/learn", json=observation(rng)).status_code == 202
            key = f"k{len(servers)}-{rng.integers(1 << 30)}"
            assert client.post("/predict", json={"x": {"x0": 1.0}, "key": key}).status_code == 200
            assert client.post("/learn", json={"key": key, "y": {"a": 1.0}}).status_code == 202
    assert len(servers) == 2 and process.pid not in servers  # two workers answered
    assert len(learners) == 1  # and one learner learned for both
    assert os.getpriority(os.PRIO_PROCESS, learners.pop()) == min(
        os.getpriority(os.PRIO_PROCESS, 0) + 7, 19
    )
    with httpx.Client(base_url=url, timeout=10) as client:
        wait_until_learned(client, 330)
        text = "".join(client.get("/metrics").text for _ in range(4))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    learns = sum(
        s.value
        for s in families["stream_mtl_requests"].samples
        if s.name == "stream_mtl_requests_total" and s.labels["endpoint"] == "/learn"
    )
    assert learns >= 330  # every worker's requests are counted, whichever answers
    assert stop_server(process)
    assert MultiTaskLearner.load(path).n_learned["a"] == 330
