"""The HTTP face of an `OnlineModel`: a FastAPI app that `stream-mtl serve` runs with uvicorn.

- `POST /predict`: `{"x": {...}, "key": ...}` -> `{"task": prediction, ...}`; or
  `{"x": [{...}, ...]}` -> `{"predictions": [{...}, ...]}`.
- `POST /learn`: `{"x": {...}, "y": {...}}`, or `{"key": ..., "y": {...}}` for labels of
  features predicted earlier under that key -> 202.
- `GET /tasks`: kinds, weights, labels learned, the mixture of heads, rolling error, drift
  events, affinity.
- `GET /healthz`: 200, or 503 with the reason learning is unavailable (a learner
  process that died and is being restarted, a failing checkpoint); the queue depth,
  the snapshot's age, the learner process's pid and restarts.
- `GET /metrics` (Prometheus text).

A request that is not an object of the right shape (400), or that the model refuses
(422; labels for a key that holds nothing: 404), gets a 4xx whose `detail` names the
field at fault; nothing is learned from it. A full learn queue, a stopped learner or a
failing checkpoint answers `/learn` with 503, `Retry-After` and the reason (`/healthz`
too): nothing is acknowledged that cannot be learned. Needs the `serve` extra (fastapi,
uvicorn, prometheus_client).

Everything a client sends is bounded (`Limits`): a body larger than `body_bytes` is
refused (413) before it is read in full, as is a `/predict` of more than `rows` rows or
a row of more than `features` features; a string (feature name or value, task, label,
key) longer than `string_length` characters gets 422. A POST must say
`Content-Type: application/json` (415 otherwise: a web page cannot post a "simple"
cross-origin form to `/learn`), and its body must be JSON as RFC 8259 has it (orjson:
UTF-8 without lone surrogates, no NaN, at most 1,024 levels deep), or it gets 400.
Metrics are labelled by route (`other` for any path the app does not serve), so that
no client can grow them.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import os
import time
import typing

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool

from stream_mtl.exceptions import InvalidInput, UnknownKey
from stream_mtl.http_limits import Limits
from stream_mtl.service import OnlineModel, Unavailable

LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5)


WORKER_SETUP = "STREAM_MTL_WORKER_SETUP"  # serve --workers: JSON for `worker_app`
ROUTES = frozenset({"/predict", "/learn", "/tasks", "/healthz", "/metrics"})


class BadRequest(ValueError):
    """A request refused before the model sees it; the text names the fault."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status = status


class _ServiceCollector:
    """Gauges read from the service when Prometheus scrapes."""

    def __init__(self, service: OnlineModel) -> None:
        self.service = service

    def collect(self) -> typing.Iterator[Metric]:
        service, model = self.service, self.service.snapshot
        age = GaugeMetricFamily(
            "stream_mtl_snapshot_age_seconds",
            "How far behind the learning model predictions may be",
        )
        age.add_metric([], service.snapshot_age)
        yield age
        loads = service.snapshot_loads
        if loads:
            loaded = CounterMetricFamily(
                "stream_mtl_snapshot_loads",
                "Snapshots this process loaded: arrays copied into a spare, or unpickled whole",
                labels=["how"],
            )
            for how, count in loads.items():
                loaded.add_metric([how], count)
            yield loaded
        not_held = GaugeMetricFamily(
            "stream_mtl_predictions_not_held",
            "Predictions under a key served while the learner was down, so not held for labels",
        )
        not_held.add_metric([], service.n_not_held)
        yield not_held
        _reason, status = _health(service)
        if status is None:  # the learner is down: what it counted comes back with it
            return
        depth = GaugeMetricFamily("stream_mtl_learn_queue_depth", "Observations waiting to learn")
        depth.add_metric([], status["queue_depth"])
        yield depth
        learned = GaugeMetricFamily(
            "stream_mtl_labels_learned", "Labels learned per task", labels=["task"]
        )
        for task, count in model.n_learned.items():
            learned.add_metric([task], count)
        yield learned
        error = GaugeMetricFamily(
            "stream_mtl_rolling_error",
            "Per-task error over the last labels (MAE for regression, error rate otherwise)",
            labels=["task", "measure"],
        )
        for task, rolling in status["errors"].items():
            error.add_metric([task, rolling.name], rolling.get())
        yield error
        drifts = GaugeMetricFamily(
            "stream_mtl_drift_events", "Drifts detected per task", labels=["task"]
        )
        counts = dict.fromkeys(model.tasks, 0)
        for event in list(model.drift_events):
            counts[event.task] = counts.get(event.task, 0) + 1
        for task, count in counts.items():
            drifts.add_metric([task], count)
        yield drifts
        refused = GaugeMetricFamily(
            "stream_mtl_learn_refused", "Observations refused because the queue was full"
        )
        refused.add_metric([], status["n_refused"])
        yield refused
        expired = GaugeMetricFamily(
            "stream_mtl_labels_expired",
            "Features held under a key whose labels never came, by cause",
            labels=["cause"],
        )
        for cause, count in status["expired"].items():
            expired.add_metric([cause], count)
        yield expired
        if "source" in status:  # serve --source: the topic's progress
            source = GaugeMetricFamily(
                "stream_mtl_source_messages",
                "Messages of the topic the learner consumes, by what became of them",
                labels=["state"],
            )
            for state in ("consumed", "learned", "set_aside"):
                source.add_metric([state], status["source"][state])
            yield source


def _bearer_matches(request: Request, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>` (compared in constant
    time, so that the answer's timing does not tell how much of a guess was right)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def worker_app() -> FastAPI:
    """The app of one `stream-mtl serve --workers N` worker process: linked to the learner
    process of the server that started it, as `WORKER_SETUP` (an environment variable)
    says."""
    setup = json.loads(os.environ[WORKER_SETUP])
    service = OnlineModel.attach(setup["board"], setup["address"], block_timeout=0)
    return create_app(service, Limits(**setup["limits"]), setup["learn_token"])


def _json(content: object) -> Response:
    """A JSON answer written by orjson (a NaN, a missing prediction, becomes null),
    without FastAPI's generic encoding of the returned value."""
    return Response(orjson.dumps(content), media_type="application/json")


class _Measured:
    """ASGI middleware: each request's latency and status, counted by route (a plain
    ASGI wrapper: Starlette's `BaseHTTPMiddleware` costs more than a prediction)."""

    def __init__(self, app: typing.Any, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: dict, receive: typing.Callable, send: typing.Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope["path"] if scope["path"] in ROUTES else "other"
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.requests.labels(endpoint, str(status)).inc()


def _health(service: OnlineModel) -> tuple[str | None, dict | None]:
    """Why learning is unavailable (None: it is not), and the learner's counts (None while
    a learner process is down)."""
    try:
        status = service.status()
    except Unavailable as error:
        return str(error), None
    return status["unavailable"], status


def _check_string(value: object, field: str, limits: Limits) -> None:
    if isinstance(value, str) and len(value) > limits.string_length:
        _too_long(value, field, limits)


def _too_long(value: str, field: str, limits: Limits) -> typing.NoReturn:
    raise BadRequest(
        f"{field} is a string of {len(value)} characters, longer than the "
        f"{limits.string_length} allowed",
        status=422,
    )


def _object(value: object, field: str, what: str, limits: Limits) -> dict:
    """A non-empty JSON object within the limits: its keys and string values checked."""
    if not isinstance(value, dict) or not value:
        raise BadRequest(f'"{field}" must be a non-empty object of {what}')
    if len(value) > limits.row_features:
        raise BadRequest(
            f'"{field}" has {len(value)} entries, more than the {limits.row_features} allowed',
            status=413,
        )
    longest = limits.string_length
    for name, item in value.items():  # the field is named only for a refusal
        if len(name) > longest:
            _too_long(name, f'a name in "{field}"', limits)
        if type(item) is str and len(item) > longest:
            _too_long(item, f'"{field}"[{name[:40]!r}]', limits)
    return value


def _features(value: object, limits: Limits, field: str = "x") -> dict:
    return _object(value, field, "feature -> value", limits)


def _labels(value: object, limits: Limits) -> dict:
    return _object(value, "y", "task -> label", limits)


def _key(body: dict, limits: Limits) -> typing.Hashable | None:
    key = body.get("key")
    if key is not None and not isinstance(key, str | int):
        raise BadRequest('"key" must be a string or an integer')
    _check_string(key, '"key"', limits)
    return key


def _too_large(size: int, limits: Limits) -> BadRequest:
    return BadRequest(
        f"the body holds {size} bytes or more, over the {limits.body_bytes} allowed", 413
    )


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _clean(value: object) -> object:
    """JSON has no NaN: a missing prediction is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def create_app(
    service: OnlineModel, limits: Limits | None = None, learn_token: str | None = None
) -> FastAPI:
    """The app for `service`; closing the app (uvicorn's shutdown) closes the service.

    With a `learn_token`, `POST /learn` needs `Authorization: Bearer <token>` (401
    otherwise): whoever can post labels can steer the model.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> app = create_app(OnlineModel(MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,))))
    >>> sorted(route.path for route in app.routes if "/docs" not in route.path)[:5]
    ['/healthz', '/learn', '/metrics', '/openapi.json', '/predict']
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> typing.AsyncIterator[None]:
        yield
        service.close()  # drains the queue and checkpoints

    limits = limits or Limits()
    app = FastAPI(title="stream-mtl", lifespan=lifespan)
    registry = CollectorRegistry()  # the request metrics
    requests = Counter(
        "stream_mtl_requests", "HTTP requests", ["endpoint", "status"], registry=registry
    )
    latency = Histogram(
        "stream_mtl_request_seconds",
        "HTTP request latency",
        ["endpoint"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: all their counts
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    registry.register(_ServiceCollector(service))

    app.add_middleware(_Measured, requests=requests, latency=latency)

    async def body_of(request: Request) -> dict:
        if not _is_json(request.headers.get("content-type")):
            raise BadRequest("the body must be JSON, sent as Content-Type: application/json", 415)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.body_bytes:
            raise _too_large(int(declared), limits)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.body_bytes:
                raise _too_large(len(raw), limits)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        unknown = sorted(set(body) - {"x", "y", "key"})
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; expected x, y, key")
        return body

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, error: BadRequest) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"detail": str(error)}, status_code=error.status, headers=headers)

    @app.exception_handler(InvalidInput)  # what the model refuses; any other error is a bug
    async def refused(_request: Request, error: InvalidInput) -> JSONResponse:
        status = 404 if isinstance(error, UnknownKey) else 422
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.exception_handler(Unavailable)  # a full queue, a stopped learner, a failing disk
    async def unavailable(_request: Request, error: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        body = await body_of(request)
        x = body.get("x")
        if isinstance(x, list):
            if len(x) > limits.rows:
                raise BadRequest(
                    f'"x" holds {len(x)} rows, more than the {limits.rows} allowed', 413
                )
            rows = [_features(row, limits, f"x[{i}]") for i, row in enumerate(x)]
            return _json({"predictions": [service.predict(row) for row in rows]})
        # predict checks x (and raises naming the fault) before it holds anything
        return _json(service.predict(_features(x, limits), key=_key(body, limits)))

    async def _learning(call_async: typing.Callable, call: typing.Callable, *args) -> int:
        """A learner process answers the event loop (no thread waits); a learner thread
        is called in the thread pool, where waiting for room in its queue blocks no one."""
        if service.process:
            return await call_async(*args)
        return await run_in_threadpool(call, *args)

    @app.post("/learn", status_code=202)
    async def learn(request: Request) -> dict:
        if learn_token is not None and not _bearer_matches(request, learn_token):
            raise BadRequest("POST /learn needs the header Authorization: Bearer <token>", 401)
        body = await body_of(request)
        y, key = _labels(body.get("y"), limits), _key(body, limits)
        if body.get("x") is None:
            if key is None:
                raise BadRequest('labels without "x" need the "key" their features were sent with')
            depth = await _learning(service.learn_label_async, service.learn_label, key, y)
        else:  # with a write-ahead log, answered once the log is on disk
            x = _features(body["x"], limits)
            depth = await _learning(service.learn_async, service.learn, x, y)
        return {"queued": True, "queue_depth": depth}

    @app.get("/tasks")
    async def tasks() -> dict:
        model = service.snapshot  # consistent, and never changed under us
        _reason, status = await run_in_threadpool(_health, service)
        errors = {} if status is None else status["errors"]
        weights = model.task_weights
        affinity = model.task_affinity
        mixture = model.mixture
        return {
            "tasks": {
                name: {
                    "kind": task.kind,
                    "weight": weights.get(name),
                    "labels_learned": model.n_learned.get(name, 0),
                    "mixture": mixture.get(name, {}),
                    "rolling_error": _clean(errors[name].get() if name in errors else None),
                }
                for name, task in model.tasks.items()
            },
            "drift_events": [event._asdict() for event in model.drift_events],
            "affinity": {
                "tasks": list(affinity.index),
                "matrix": [[_clean(v) for v in row] for row in affinity.to_numpy().tolist()],
            },
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        reason, status = await run_in_threadpool(_health, service)
        status = status or {}  # a learner process that is down says nothing
        body = {
            "status": "ok" if reason is None else reason,
            "queue_depth": status.get("queue_depth"),
            "snapshot_age_seconds": _clean(service.snapshot_age),
            "learner_pid": status.get("pid"),  # a learner process's own word
            "learner_restarts": status.get("restarts"),
            "server_pid": os.getpid(),
            **({"source": status["source"]} if "source" in status else {}),
        }
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @app.get("/metrics")
    async def metrics() -> Response:  # in a thread: the learner's counts are asked for
        text = await run_in_threadpool(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app
