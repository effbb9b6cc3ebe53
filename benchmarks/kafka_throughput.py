"""Kafka end to end: consume, decode, predict, learn - against a bare consumer, side by side.

One topic of small JSON messages (the reference model's: 20 features, 3 regression
targets) on a real broker (tests/kafka_broker.py: a local Kafka 0.9, or the one named by
KAFKA_BOOTSTRAP_SERVERS). Each round drains the whole topic once per contender, each in
a fresh consumer group, in turn:

- `bare_json`: a bare kafka-python consumer that polls and `json.loads` every value
  (the baseline: what draining the topic costs at all);
- `bare_orjson`: the same with orjson, the decoder stream-mtl uses;
- `torch_batches`: `LearningLoop` on the torch backend, `learn_many` per poll;
- `numpy_learn_one`: `LearningLoop` on the NumPy backend, `learn_one` per message;
- `torch_batches_unfrozen`: `torch_batches` with `freeze_heap=False` (the garbage
  collector scans every object at each full collection, as before `frozen_heap`).

Each run is timed from the first poll that returns messages to the last message learned
(group joins and the final checkpoint are left out; checkpoints on the way are in).
Medians over rounds; the ratios are against `bare_json` of the same round. Prints a
table and whether the targets of issue 14 are met (`TARGETS`), writes
benchmarks/results/kafka_throughput.json.

Usage: python -m benchmarks.kafka_throughput [--n 20000] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from benchmarks.throughput import TASKS, make_stream, write_result
from stream_mtl import MultiTaskLearner, Regression
from stream_mtl.connectors.kafka import KafkaSource
from stream_mtl.connectors.learning_loop import LearningLoop
from stream_mtl.connectors.messages import encode_json

HERE = Path(__file__).resolve().parent
# Issue 14: each contender's rate at least this share of the bare JSON consumer's.
TARGETS = {"numpy_learn_one": 0.5, "torch_batches": 0.9}
sys.path.insert(0, str(HERE.parent / "tests"))
from kafka_broker import running_broker  # noqa: E402  (test infrastructure, shared)


def fill_topic(broker, topic: str, n: int) -> None:
    X, Y = make_stream(n, seed=0)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=broker.api_version)
    for i in range(n):
        message = {
            "x": {f"x{j}": round(float(v), 6) for j, v in enumerate(X[i])},
            "y": {t: round(float(v), 6) for t, v in zip(TASKS, Y[i])},
            "key": f"k{i}",
        }
        producer.send(topic, value=encode_json(message), key=f"k{i}".encode())
    producer.flush()
    producer.close()


def bare(broker, topic: str, n: int, decode) -> float:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        api_version=broker.api_version,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=500,
    )
    seen, started = 0, None
    while seen < n:
        records = consumer.poll(timeout_ms=500, max_records=500)
        if records and started is None:
            started = time.perf_counter()
        for part in records.values():
            for record in part:
                decode(record.value)
                seen += 1
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def learning(
    broker, topic: str, n: int, backend: str, profile: bool, freeze_heap: bool = True
) -> tuple[float, str]:
    model = MultiTaskLearner(
        tasks={t: Regression() for t in TASKS}, hidden=(64, 64), backend=backend, seed=0
    )
    source = KafkaSource(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"{backend}-{uuid.uuid4().hex[:8]}",
        api_version=broker.api_version,
    )
    clock = {"started": None, "ended": None, "learned": 0}
    batches = source.batches

    def timed_batches():
        for batch in batches():
            if batch and clock["started"] is None:
                clock["started"] = time.perf_counter()
            yield batch

    def on_learned(messages) -> None:
        clock["learned"] += len(messages)
        if clock["learned"] >= n and clock["ended"] is None:
            clock["ended"] = time.perf_counter()
            loop.stop()

    source.batches = timed_batches
    with tempfile.TemporaryDirectory() as folder:
        loop = LearningLoop(
            model,
            source,
            Path(folder) / "model.ckpt",
            checkpoint_every=10_000,
            on_learned=on_learned,
            log_every=3600,
            freeze_heap=freeze_heap,
        )
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        loop.run()
        if profiler:
            profiler.disable()
    report = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
        report = out.getvalue()
    return clock["ended"] - clock["started"], report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages in the topic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    parser.add_argument("--out", default=str(HERE / "results" / "kafka_throughput.json"))
    args = parser.parse_args(argv)

    import orjson

    contenders = {
        "bare_json": lambda: bare(broker, topic, args.n, json.loads),
        "bare_orjson": lambda: bare(broker, topic, args.n, orjson.loads),
        "torch_batches": lambda: learning(broker, topic, args.n, "torch", False)[0],
        "numpy_learn_one": lambda: learning(broker, topic, args.n, "numpy", False)[0],
        "torch_batches_unfrozen": lambda: learning(
            broker, topic, args.n, "torch", False, freeze_heap=False
        )[0],
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    with running_broker() as broker:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        broker.create_topic(topic, partitions=3)
        fill_topic(broker, topic, args.n)
        for round_ in range(args.rounds):
            seconds = {name: run() for name, run in contenders.items()}
            for name, value in seconds.items():
                rates[name].append(args.n / value)
                ratios[name].append(seconds["bare_json"] / value)
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k} {args.n / v:,.0f}/s" for k, v in seconds.items())
            )
        profiles = {}
        if args.profile:
            for backend in ("torch", "numpy"):
                profiles[backend] = learning(broker, topic, args.n, backend, True)[1]

    print(f"\n{args.n:,} messages, 3 partitions, medians of {args.rounds} rounds")
    print(f"{'contender':<24}{'msg/s':>10}{'vs bare json':>14}   per-round ratios")
    for name in contenders:
        each = " ".join(f"{r:.2f}" for r in ratios[name])
        print(
            f"{name:<24}{statistics.median(rates[name]):>10,.0f}"
            f"{statistics.median(ratios[name]):>13.2f}x   {each}"
        )
    medians = {name: statistics.median(ratios[name]) for name in contenders}
    met = {
        f"{name} >= {floor}x bare_json": medians[name] >= floor
        for name, floor in TARGETS.items()
        if name in medians
    }
    for target, ok in met.items():
        print(f"{'met' if ok else 'NOT MET':>8}  {target}")
    for backend, report in profiles.items():
        print(f"\n-- where the time goes, {backend} --\n{report}")
    return write_result(
        {
            "messages": args.n,
            "rounds": args.rounds,
            "rates_per_second": rates,
            "ratio_to_bare_json": ratios,
            "median_rate": {k: statistics.median(v) for k, v in rates.items()},
            "median_ratio": medians,
            "targets": met,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
