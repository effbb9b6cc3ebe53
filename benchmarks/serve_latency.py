"""Predict latency of a live model, in process and over HTTP, with learning on and off.

The reference model (20 features, (64, 64), 3 regression tasks, NumPy backend) after a
warm-up. Requests come at a fixed offered rate (an open loop: each is sent at its
scheduled time, and its latency counts from then), and are answered:

- in process: `OnlineModel.predict` in this thread, while four other threads offer
  `learn` as fast as the queue takes it ("learning on"), or with no learning; with the
  learner in a process, also while the four threads run in another process, attached
  to the same learner ("fed elsewhere": this process then only predicts, as a serving
  process does when the labels come from another serving process), and while the
  learner consumes a feed of its own flat out, polls of 16 rows as `KafkaFeed` delivers
  them ("from its feed": `serve --source kafka://...`, no other process feeding it);
- two floors, paced the same way: a call that does nothing (what this machine's
  scheduler and timer alone add) and a bare `predict_one` on a snapshot, no service;
- over HTTP: `stream-mtl serve` on a loopback port; `/predict` from an open-loop
  generator in its own process (`benchmarks.http_load`: up to 64 kept-alive
  connections), then the answers per second with 8 clients sending back to back; for
  "learning on", another process posts `/learn` on 4 connections as fast as answered
  (the server then answers a /learn for every few dozen /predict: it parses, checks and
  forwards each, at about the cost of a /predict); with the learner in a process, also
  with a learner that consumes a feed of its own flat out ("from its feed": a server as
  `serve --source kafka://...` is, its topic replayed by `benchmarks._feed_server` so
  that no broker shares the machine).

Each with the learner in a child process (`OnlineModel(process=True)`, `serve --learner
process`: the default) and on a thread of the serving process (`process=False`).

Off and on take turns over rounds; p50 and p99 are over all rounds' requests. The rate
at which the model learned meanwhile is reported beside them. Bounded: a fixed number of
requests per turn. Prints a table, writes benchmarks/results/serve_latency.json.

Targets (issue 16), on a 2-core machine: in process, predict p99 <= 200 us with learning
flat out and at most 1.5x the p99 without; over HTTP at 1,000 requests/s, p99 <= 5 ms
with learning flat out, and throughput with learning at least 90% of without.

Usage: python -m benchmarks.serve_latency [--rounds 3] [--requests 3000] [--rate 1000]
       [--http-requests 3000] [--http-rate 1000]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks import http_load
from benchmarks.replay_feed import ReplayFeed
from benchmarks.throughput import TASKS, make_stream, write_result
from stream_mtl import MultiTaskLearner, Regression
from stream_mtl.predictor import Snapshot
from stream_mtl.service import OnlineModel, QueueFull

HERE = Path(__file__).resolve().parent
LEARNERS = ("process", "thread")  # OnlineModel(process=...), serve --learner
FEEDERS = 4  # threads offering learn: enough to keep the learner busy
# in-process turns: (learner, learning)
IN_PROCESS = [
    ("process", "no"),
    ("process", "here"),
    ("process", "elsewhere"),
    ("process", "feed"),
    ("thread", "no"),
    ("thread", "here"),
]
MODES = {
    "no": "no_learning",
    "here": "learning",
    "elsewhere": "learning_fed_elsewhere",
    "feed": "learning_from_its_feed",
}
SATURATE_SECONDS = 3.0  # HTTP: how long 8 clients send /predict back to back
sys.path.insert(0, str(HERE.parent / "tests"))
from kafka_broker import free_port  # noqa: E402
from serve_process import start_server, started, stop_server  # noqa: E402  (shared with the tests)


def observations(n: int, seed: int) -> list[tuple[dict, dict]]:
    X, Y = make_stream(n, seed=seed)
    return [
        ({f"x{j}": float(v) for j, v in enumerate(x)}, dict(zip(TASKS, map(float, y))))
        for x, y in zip(X, Y)
    ]


def paced(n: int, rate: float, call) -> np.ndarray:
    """Latencies (s) of `n` calls offered at `rate` per second, from each scheduled time."""
    latencies = np.empty(n)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 3e-4:
            time.sleep(wait - 2e-4)  # sleep most of the wait: the GIL stays free
        while time.perf_counter() < due:
            pass
        call(i)
        latencies[i] = time.perf_counter() - due
    return latencies


def learned(service: OnlineModel) -> int:
    return service.snapshot.n_learned.get(TASKS[0], 0)


def reference_model() -> MultiTaskLearner:
    return MultiTaskLearner(
        tasks={t: Regression() for t in TASKS}, hidden=(64, 64), backend="numpy", seed=0
    )


def offer_learning(service: OnlineModel, rows: list, stop: threading.Event) -> None:
    """`learn` each of `rows` as fast as the queue takes them, round and round until
    `stop` (once through when `stop` is None)."""
    for i in range(len(rows)) if stop is None else itertools.count():
        if stop is not None and stop.is_set():
            return
        while True:
            try:
                service.learn(*rows[i % len(rows)])
                break
            except QueueFull:
                time.sleep(0.0005)


def start_feeders(service: OnlineModel, rows: list, stop: threading.Event) -> list:
    """FEEDERS threads offering `rows` to `service` until `stop`, started."""
    feeders = [
        threading.Thread(target=offer_learning, args=(service, rows, stop)) for _ in range(FEEDERS)
    ]
    for feeder in feeders:
        feeder.start()
    return feeders


def learn_elsewhere(board: str, address: str, rows: list, seconds: float) -> None:
    """In another process: FEEDERS threads offer learning to the learner at `address`."""
    service = OnlineModel.attach(board, address, block_timeout=0)
    stop = threading.Event()
    feeders = start_feeders(service, rows, stop)
    time.sleep(seconds)
    stop.set()
    for feeder in feeders:
        feeder.join()
    service.close()


def floor_turn(bare: bool, n: int, rate: float, data: list) -> np.ndarray:
    """Latencies of a paced call that does nothing, or of a bare snapshot predict_one."""
    if not bare:
        return paced(n, rate, lambda i: None)
    model = reference_model()
    for x, y in data[:2000]:
        model.learn_one(x, y)
    snapshot = Snapshot(model)
    return paced(n, rate, lambda i: snapshot.predict_one(data[i % len(data)][0]))


def in_process_turn(
    learner: str, learning: str, n: int, rate: float, data: list
) -> tuple[np.ndarray, float]:
    """`learning`: "no", "here" (feeder threads in this process), "elsewhere" (in
    another process) or "feed" (the learner's own feed)."""
    folder = tempfile.TemporaryDirectory()
    address = str(Path(folder.name) / "learner.sock")
    options: dict = {}
    if learning == "elsewhere":
        options["listen"] = address
    elif learning == "feed":  # a feed's position is kept in the service's checkpoints
        options.update(feed=ReplayFeed(data), checkpoint=Path(folder.name) / "model.ckpt")
    # block_timeout=0: the feeder is refused at once when the queue is full, and retries
    service = OnlineModel(
        reference_model(),
        process=learner == "process",
        queue_size=1000,
        block_timeout=0,
        **options,
    )
    offer_learning(service, data[:2000], None)  # warm-up
    while service.queue_depth:
        time.sleep(0.01)
    time.sleep(0.2)  # the last snapshot published
    stop = threading.Event()
    feeding: list = []  # what offers learning: threads here, or another process
    if learning == "here":
        feeding = start_feeders(service, data, stop)
    elif learning == "elsewhere":
        feeding = [
            multiprocessing.get_context("spawn").Process(
                target=learn_elsewhere, args=(service.board, address, data, n / rate + 2.0)
            )
        ]
        feeding[0].start()
        time.sleep(1.5)  # its interpreter starts, and the learner gets busy
    elif learning == "feed":
        time.sleep(1.0)  # the learner gets busy
    learned_before, started = learned(service), time.perf_counter()
    latencies = paced(n, rate, lambda i: service.predict(data[i % len(data)][0]))
    learn_rate = (learned(service) - learned_before) / (time.perf_counter() - started)
    stop.set()
    for one in feeding:
        one.join()
    service.close()
    folder.cleanup()
    return latencies, learn_rate


def http_turn(
    url: str, learning: bool, n: int, rate: float, data: list
) -> tuple[np.ndarray, float, float]:
    """Open-loop /predict latencies at `rate` from a generator process, the answers per
    second at saturation, and the rate learned meanwhile; with learning, a second
    process posts /learn on 4 connections as fast as they are answered."""
    host, port = url.removeprefix("http://").split(":")
    where = {"host": host, "port": int(port)}
    predicts = [orjson.dumps({"x": x}) for x, _ in data]
    learns = [orjson.dumps({"x": x, "y": y}) for x, y in data]
    seconds = n / rate + SATURATE_SECONDS + 2
    feeder = multiprocessing.get_context("spawn").Process(
        target=http_load.main,
        args=("saturate", {**where, "path": "/learn", "bodies": learns, "connections": 4}),
        kwargs={"seconds": seconds},
    )
    with httpx.Client(base_url=url, timeout=10) as client:

        def learned() -> int:
            return client.get("/tasks").json()["tasks"][TASKS[0]]["labels_learned"]

        before, started = learned(), time.perf_counter()
        if learning:
            feeder.start()
            time.sleep(1.0)  # its interpreter starts, and the learner gets busy
        opened = http_load.run(
            "open_loop", **where, path="/predict", bodies=predicts, rate=rate, n=n, connections=64
        )
        saturated = http_load.run(
            "saturate",
            **where,
            path="/predict",
            bodies=predicts,
            connections=8,
            seconds=SATURATE_SECONDS,
        )
        learn_rate = (learned() - before) / (time.perf_counter() - started)
        if learning:
            feeder.join()
    return np.array(opened["latencies"]), saturated["per_second"], learn_rate


def warm_up(url: str, data: list) -> None:
    with httpx.Client(base_url=url) as client:
        for x, _y in data[:300]:
            client.post("/predict", json={"x": x})


def feed_turn(n: int, rate: float, data: list) -> tuple[np.ndarray, float, float]:
    """`http_turn` without /learn, on a server whose learner process learns flat out from
    a feed of its own (`benchmarks._feed_server`), started for the turn."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        command = [sys.executable, "-m", "benchmarks._feed_server", str(port), folder]
        process, url = started(command, port, Path(folder) / "server.log")
        try:
            warm_up(url, data)
            return http_turn(url, False, n, rate, data)
        finally:
            stop_server(process)


def record(turn: tuple[list, list, list], latencies, throughput: float, rate: float) -> None:
    """Add an HTTP turn's figures to the lists of `turns` (latencies, rates, throughputs)."""
    turn[0].append(latencies)
    turn[1].append(rate)
    turn[2].append(throughput)


def summary(latencies: list[np.ndarray], rates: list[float], throughputs: list[float]) -> dict:
    every = np.concatenate(latencies) * 1e6
    return {
        "p50_us": float(np.percentile(every, 50)),
        "p99_us": float(np.percentile(every, 99)),
        "requests": int(every.size),
        "learned_per_second": float(np.median(rates)),
        "answers_per_second": float(np.median(throughputs)) if throughputs else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="in process, per turn")
    parser.add_argument("--rate", type=float, default=1000.0, help="in process, requests/s")
    parser.add_argument("--http-requests", type=int, default=3000, help="per turn")
    parser.add_argument("--http-rate", type=float, default=1000.0, help="requests/s")
    parser.add_argument("--out", default=str(HERE / "results" / "serve_latency.json"))
    args = parser.parse_args(argv)
    data = observations(5000, seed=0)
    turns: dict[str, tuple[list, list, list]] = {
        name: ([], [], []) for name in ("in_process_floor_no_op", "in_process_floor_bare_predict")
    }
    turns.update(
        {f"in_process_{learner}_{MODES[mode]}": ([], [], []) for learner, mode in IN_PROCESS}
    )
    turns.update(
        {
            f"http_{learner}_{mode}": ([], [], [])
            for learner in LEARNERS
            for mode in ("no_learning", "learning")
        }
    )
    turns["http_process_learning_from_its_feed"] = ([], [], [])
    for _ in range(args.rounds):
        for bare in (False, True):
            name = "in_process_floor_bare_predict" if bare else "in_process_floor_no_op"
            turns[name][0].append(floor_turn(bare, args.requests, args.rate, data))
            turns[name][1].append(0.0)
        for learner, mode in IN_PROCESS:
            latencies, rate = in_process_turn(learner, mode, args.requests, args.rate, data)
            name = f"in_process_{learner}_{MODES[mode]}"
            turns[name][0].append(latencies)
            turns[name][1].append(rate)
    for learner in LEARNERS:
        with tempfile.TemporaryDirectory() as folder:
            tasks = [f"{task}:regression" for task in TASKS]
            options = ["--learner", learner]
            process, url = start_server(Path(folder) / "model.ckpt", *tasks, options=options)
            try:
                warm_up(url, data)
                for _ in range(args.rounds):
                    for learning in (False, True):
                        name = f"http_{learner}_{'learning' if learning else 'no_learning'}"
                        record(
                            turns[name],
                            *http_turn(url, learning, args.http_requests, args.http_rate, data),
                        )
                    if learner == "process":  # between the others, while this server idles
                        record(
                            turns["http_process_learning_from_its_feed"],
                            *feed_turn(args.http_requests, args.http_rate, data),
                        )
            finally:
                stop_server(process)
    results = {name: summary(*values) for name, values in turns.items()}
    print(f"{'':<32}{'p50 µs':>9}{'p99 µs':>9}{'learned/s':>11}{'answers/s':>11}")
    for name, r in results.items():
        answers = "" if r["answers_per_second"] is None else f"{r['answers_per_second']:.0f}"
        print(
            f"{name:<32}{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}"
            f"{r['learned_per_second']:>11.0f}{answers:>11}"
        )
    ratios, throughput_kept = {}, {}
    elsewhere = results["in_process_process_learning_fed_elsewhere"]["p99_us"]
    print(
        f"the machine's floor: a paced no-op p99 {results['in_process_floor_no_op']['p99_us']:.0f}"
        f" µs, a bare snapshot predict_one p99 "
        f"{results['in_process_floor_bare_predict']['p99_us']:.0f} µs; learner in a process "
        f"fed from another: p99 {elsewhere:.0f} µs"
    )
    for learner in LEARNERS:
        inside = results[f"in_process_{learner}_learning"]["p99_us"]
        ratios[learner] = inside / results[f"in_process_{learner}_no_learning"]["p99_us"]
        http_on, http_off = (results[f"http_{learner}_{m}"] for m in ("learning", "no_learning"))
        kept = http_on["answers_per_second"] / http_off["answers_per_second"]
        print(
            f"learner in a {learner}: in process with learning p99 {inside:.0f} µs "
            f"(target <= 200), {ratios[learner]:.2f}x the p99 without (target <= 1.5); "
            f"over HTTP at {args.http_rate:.0f}/s with learning p99 "
            f"{http_on['p99_us'] / 1000:.2f} ms (target <= 5), throughput with learning "
            f"{kept:.0%} of without (target >= 90%)"
        )
        throughput_kept[learner] = kept
    own = results["in_process_process_learning_from_its_feed"]["p99_us"]
    ratios["process_from_its_feed"] = own / results["in_process_process_no_learning"]["p99_us"]
    over_http = results["http_process_learning_from_its_feed"]
    throughput_kept["process_from_its_feed"] = (
        over_http["answers_per_second"] / results["http_process_no_learning"]["answers_per_second"]
    )
    print(
        f"learner in a process learning from its own feed: p99 {own:.0f} µs (target <= 200), "
        f"{ratios['process_from_its_feed']:.2f}x the p99 without (target <= 1.5); over HTTP "
        f"p99 {over_http['p99_us'] / 1000:.2f} ms (target <= 5), throughput "
        f"{throughput_kept['process_from_its_feed']:.0%} of without (target >= 90%), "
        f"learning {over_http['learned_per_second']:.0f}/s"
    )
    return write_result(
        {
            "rates": {"in_process": args.rate, "http": args.http_rate},
            "results": results,
            "in_process_p99_ratio": ratios,
            "http_throughput_kept": throughput_kept,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
