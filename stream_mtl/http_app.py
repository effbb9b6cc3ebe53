"""The HTTP face of an `OnlineModel`: a FastAPI app that `stream-mtl serve` runs with uvicorn.

- `POST /predict`: `{"x": {...}, "key": ...}` -> `{"task": prediction, ...}`; or
  `{"x": [{...}, ...]}` -> `{"predictions": [{...}, ...]}`.
- `POST /learn`: `{"x": {...}, "y": {...}}`, or `{"key": ..., "y": {...}}` for labels of
  features predicted earlier under that key -> 202.
- `GET /tasks`: kinds, weights, labels learned, the mixture of heads, rolling error, drift
  events, affinity.
- `GET /healthz`, `GET /metrics` (Prometheus text).

A request that is not an object of the right shape (400), or that the model refuses
(422; labels for a key that holds nothing: 404), gets a 4xx whose `detail` names the
field at fault; nothing is learned from it. A full learn queue answers 503 with
`Retry-After`. Needs the `serve` extra (fastapi, uvicorn, prometheus_client).
"""

from __future__ import annotations

import contextlib
import math
import time
import typing

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from stream_mtl.exceptions import InvalidInput, UnknownKey
from stream_mtl.service import OnlineModel, QueueFull

LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5)


class BadRequest(ValueError):
    """A request body of the wrong shape; the text names the field."""


class _ServiceCollector:
    """Gauges read from the service when Prometheus scrapes."""

    def __init__(self, service: OnlineModel) -> None:
        self.service = service

    def collect(self) -> typing.Iterator[GaugeMetricFamily]:
        service, model = self.service, self.service.snapshot
        depth = GaugeMetricFamily("stream_mtl_learn_queue_depth", "Observations waiting to learn")
        depth.add_metric([], service.queue_depth)
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
        for task, rolling in list(service.errors.items()):
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
        refused.add_metric([], service.n_refused)
        yield refused
        expired = GaugeMetricFamily(
            "stream_mtl_labels_expired",
            "Features held under a key whose labels never came, by cause",
            labels=["cause"],
        )
        for cause, count in service.expired().items():
            expired.add_metric([cause], count)
        yield expired


def _features(value: object, field: str = "x") -> dict:
    if not isinstance(value, dict) or not value:
        raise BadRequest(f'"{field}" must be a non-empty object of feature -> value')
    return value


def _labels(value: object) -> dict:
    if not isinstance(value, dict) or not value:
        raise BadRequest('"y" must be a non-empty object of task -> label')
    return value


def _key(body: dict) -> typing.Hashable | None:
    key = body.get("key")
    if key is not None and not isinstance(key, str | int):
        raise BadRequest('"key" must be a string or an integer')
    return key


def _clean(value: object) -> object:
    """JSON has no NaN: a missing prediction is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def create_app(service: OnlineModel) -> FastAPI:
    """The app for `service`; closing the app (uvicorn's shutdown) closes the service.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> app = create_app(OnlineModel(MultiTaskLearner(tasks={"y": Regression()}, hidden=(4,))))
    >>> sorted(route.path for route in app.routes if "/docs" not in route.path)[:5]
    ['/healthz', '/learn', '/metrics', '/openapi.json', '/predict']
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> typing.AsyncIterator[None]:
        yield
        service.close()  # drains the queue and checkpoints

    app = FastAPI(title="stream-mtl", lifespan=lifespan)
    registry = CollectorRegistry()
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
    registry.register(_ServiceCollector(service))

    @app.middleware("http")
    async def measure(request: Request, call_next: typing.Callable) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path
        latency.labels(endpoint).observe(time.perf_counter() - started)
        requests.labels(endpoint, str(response.status_code)).inc()
        return response

    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        unknown = sorted(set(body) - {"x", "y", "key"})
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; expected x, y, key")
        return body

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, error: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(InvalidInput)  # what the model refuses; any other error is a bug
    async def refused(_request: Request, error: InvalidInput) -> JSONResponse:
        status = 404 if isinstance(error, UnknownKey) else 422
        return JSONResponse({"detail": str(error)}, status_code=status)

    @app.exception_handler(QueueFull)
    async def full(_request: Request, error: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await body_of(request)
        x = body.get("x")
        if isinstance(x, list):
            rows = [_features(row, f"x[{i}]") for i, row in enumerate(x)]
            return {"predictions": [_clean(service.predict(row)) for row in rows]}
        # predict checks x (and raises naming the fault) before it holds anything
        return _clean(service.predict(_features(x), key=_key(body)))

    @app.post("/learn", status_code=202)
    async def learn(request: Request) -> dict:
        body = await body_of(request)
        y = _labels(body.get("y"))
        if body.get("x") is None:
            key = _key(body)
            if key is None:
                raise BadRequest('labels without "x" need the "key" their features were sent with')
            service.learn_label(key, y)
        else:
            service.learn(_features(body["x"]), y)
        return {"queued": True, "queue_depth": service.queue_depth}

    @app.get("/tasks")
    async def tasks() -> dict:
        model = service.snapshot  # consistent, and never changed under us
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
                    "rolling_error": _clean(
                        service.errors[name].get() if name in service.errors else None
                    ),
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
        status = 200 if service.alive else 503
        body = {"status": "ok" if service.alive else "learner stopped"}
        return JSONResponse({**body, "queue_depth": service.queue_depth}, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
