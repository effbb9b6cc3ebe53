"""Scale-out: several workers learning one model (issue 18) - accuracy and throughput.

1. **Accuracy** (`accuracy`): prequential error of N workers against one, on the
   synthetic multi-task stream and on SARCOS, at several seeds. The rows are spread over
   4 partitions (row i on partition i mod 4) and worker r reads the partitions p with
   p mod N == r, as `stream-mtl run --workers N` does. The workers go in rounds of one
   poll each, 100 rows of the stream a round whatever N (100 / N rows a worker), so
   that every contender predicts a row having learned the same rows before it, up to
   the last round's: every worker predicts its poll's rows, registers the others'
   new features, learns its rows, and every `sync_every` rows a worker learned they
   merge their models (`stream_mtl.averaging.merge_states`, the same merge the
   distributed loop makes). The workers run in one process, one after another within a
   round: this measures the maths of scale-out, not its timing. One worker goes through
   the same rounds without merges. Errors are normalised MSEs (MSE / Var(y)) of the
   regression tasks, and the error rate of the binary ones, over the whole stream.
   The workers step with N times the model's learning rate, as the loop's default
   `--lr-scaling linear` makes them; the runs marked `lr=none` step with the model's own.

2. **Throughput** (`throughput`): messages learned per second by `DistributedLoop` on a
   real Kafka broker (tests/kafka_broker.py, or KAFKA_BOOTSTRAP_SERVERS), the topic
   filled before the clock starts: one worker through a `SoloGroup` (no collective call
   at all: the single-process rate with the same loop), one and two workers under
   torchrun (gloo), and two workers at several `sync_every`. Each worker is pinned to a
   core (rank mod cores) where the machine allows; the broker's CPU time over each run
   is reported beside it. The rate counts the messages learned after the first poll's
   until the last one, over that time (torch's import, the group's start, compiling
   and the final idle wait are not counted).

Target (issue 18): 2 workers at least 1.8x one where cores allow; the accuracy of 2
workers within the seeds' noise of one.

Usage: python -m benchmarks.scaleout accuracy [--seeds 3] [--n 20000]
       python -m benchmarks.scaleout throughput [--messages 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.throughput import grouped_runs, write_result
from stream_mtl import MultiTaskLearner
from stream_mtl.averaging import merge_states
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.datasets import SARCOS
from stream_mtl.tasks import task_from_kind

HERE = Path(__file__).resolve().parent
PARTITIONS = 4
POLL = 100
SYNTHETIC_TASKS = {"y1": "regression", "y2": "regression", "y3": "regression", "flag": "binary"}


# -- accuracy -------------------------------------------------------------------------


def _stream(name: str, n: int, seed: int) -> tuple[dict[str, str], list]:
    if name == "sarcos":
        data = SARCOS()
        return dict(data.tasks), list(data)
    stream = SyntheticStream(tasks=SYNTHETIC_TASKS, n_features=20, n=n, seed=seed)
    return dict(SYNTHETIC_TASKS), list(stream)


def prequential_workers(
    tasks: dict[str, str],
    rows: list,
    n_workers: int,
    sync_every: int,
    seed: int,
    lr_scaling: str = "linear",
) -> dict[str, float]:
    """Each task's prequential error when `n_workers` learn `rows` (see the module)."""
    factor = n_workers if lr_scaling == "linear" else 1

    def new_model() -> MultiTaskLearner:
        return MultiTaskLearner(
            tasks={name: task_from_kind(kind) for name, kind in tasks.items()}, seed=seed
        )

    shares = [
        [obs for i, obs in enumerate(rows) if (i % PARTITIONS) % n_workers == rank]
        for rank in range(n_workers)
    ]
    workers = [new_model() for _ in range(n_workers)]
    base = workers[0]._state()
    for worker in workers:
        worker._scale_lr(factor)
    predicted: dict[str, list] = {name: [] for name in tasks}
    truth: dict[str, list] = {name: [] for name in tasks}
    since_sync = 0
    poll_size = max(1, POLL // n_workers)  # a round is POLL rows of the stream
    for start in range(0, max(len(share) for share in shares), poll_size):
        polls = [share[start : start + poll_size] for share in shares]
        for worker, poll in zip(workers, polls):
            for obs in poll:
                prediction = worker.predict_one(obs.x)
                for name, label in obs.y.items():
                    predicted[name].append(prediction.get(name))
                    truth[name].append(label)
        schemas = [w.unseen([o.x for o in p], [o.y for o in p]) for w, p in zip(workers, polls)]
        for worker in workers:
            for schema in schemas:
                worker.register(schema)
        for worker, poll in zip(workers, polls):
            for obs in poll:
                worker.learn_one(obs.x, obs.y)
        since_sync += max(len(poll) for poll in polls)
        if n_workers > 1 and since_sync >= sync_every:
            base = merge_states(base, [worker._state() for worker in workers])
            workers = [MultiTaskLearner._from_state(*base, None, None) for _ in workers]
            for worker in workers:
                worker._scale_lr(factor)
            since_sync = 0
    whole = {name: _error(tasks[name], truth[name], predicted[name]) for name in tasks}
    half = {
        name: _error(
            tasks[name],
            truth[name][len(truth[name]) // 2 :],
            predicted[name][len(truth[name]) // 2 :],
        )
        for name in tasks
    }
    return {"whole": whole, "last_half": half}


def _error(kind: str, truth: list, predicted: list) -> float:
    if kind == "regression":
        y = np.array(truth, float)
        guess = np.array([np.nan if p is None else p for p in predicted], float)
        guess = np.where(np.isnan(guess), y.mean(), guess)
        return float(np.mean((y - guess) ** 2) / np.var(y))
    return float(np.mean([p != t for p, t in zip(predicted, truth)]))


def _accuracy_job(job: tuple) -> tuple[str, str, dict]:
    data, n, seed, n_workers, sync_every, lr_scaling = job
    tasks, rows = _stream(data, n, seed)
    started = time.perf_counter()
    errors = prequential_workers(tasks, rows, n_workers, sync_every, seed, lr_scaling)
    result = {"seed": seed, "seconds": time.perf_counter() - started, "errors": errors}
    for part, values in errors.items():
        regression = [e for name, e in values.items() if tasks[name] == "regression"]
        result[f"mean_nmse_{part}"] = float(np.mean(regression))
    scaling = "" if n_workers == 1 or lr_scaling == "linear" else f"/lr={lr_scaling}"
    return f"{data}/{n_workers}/{sync_every}{scaling}", str(seed), result


def accuracy(args: argparse.Namespace) -> dict:
    settings = [(1, 0, "linear")] + [
        (2, k, scaling) for k in args.sync_every for scaling in ("linear", "none")
    ]
    jobs = [
        (data, args.n, seed, *setting)
        for data in args.data
        for seed in range(args.seeds)
        for setting in settings
    ]
    runs = grouped_runs(_accuracy_job, jobs, args.jobs)
    table = {}
    for key, results in runs.items():
        table[key] = {"runs": results}
        line = f"{key:20s}"
        for part in ("whole", "last_half"):
            values = [r[f"mean_nmse_{part}"] for r in results]
            median = statistics.median(values)
            table[key][part] = {"median": median, "min": min(values), "max": max(values)}
            line += f"  {part} {median:.4f} [{min(values):.4f}, {max(values):.4f}]"
        print(
            line + f" (mean nMSE of the regression tasks, median [range] of {len(results)} seeds)"
        )
    return write_result({"args": _plain(args), "accuracy": table}, args.out)


# -- throughput -----------------------------------------------------------------------


def throughput(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from kafka import KafkaProducer
    from kafka_broker import running_broker

    from stream_mtl.connectors.messages import encode_json, message_from_observation

    stream = SyntheticStream(tasks=SYNTHETIC_TASKS, n_features=20, n=args.messages, seed=0)
    values = [encode_json(message_from_observation(obs)) for obs in stream]
    results = {}
    with running_broker() as broker:
        configurations = [("solo", 1, args.sync_every[0])]
        configurations += [("torch", 1, args.sync_every[0])]
        configurations += [("torch", 2, k) for k in args.sync_every]
        for round_ in range(args.rounds):
            for kind, n_workers, sync_every in configurations:
                topic = f"scaleout-{round_}-{kind}-{n_workers}-{sync_every}"
                broker.create_topic(topic, partitions=PARTITIONS)
                producer = KafkaProducer(
                    bootstrap_servers=broker.bootstrap, api_version=broker.api_version
                )
                for i, value in enumerate(values):
                    producer.send(topic, value=value, key=f"k{i}".encode())
                producer.flush()
                producer.close()
                run = _timed_run(broker, topic, kind, n_workers, sync_every)
                key = f"{kind}/{n_workers}/{sync_every}"
                results.setdefault(key, []).append(run)
                print(
                    f"round {round_} {key:16s} {run['rate']:8.0f} msg/s  "
                    f"sync {run['sync_share']:.1%}  broker CPU {run['broker_cpu_s']:.1f} s"
                )
    table = {
        key: {"median_rate": statistics.median(r["rate"] for r in runs), "runs": runs}
        for key, runs in results.items()
    }
    one = table[f"torch/1/{args.sync_every[0]}"]["median_rate"]
    for key, row in table.items():
        row["vs_one_worker"] = row["median_rate"] / one
        rate, ratio = row["median_rate"], row["vs_one_worker"]
        print(f"{key:16s} median {rate:8.0f} msg/s  {ratio:.2f}x one worker")
    return write_result(
        {"args": _plain(args), "cores": os.cpu_count(), "throughput": table}, args.out
    )


def _broker_cpu_seconds() -> float:
    """CPU seconds used so far by the Java processes (the broker and ZooKeeper)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if b"java" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _timed_run(broker, topic: str, kind: str, n_workers: int, sync_every: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        version = ".".join(map(str, broker.api_version))
        worker = [
            "-m", "benchmarks._scaleout_worker",
            broker.bootstrap, topic, str(sync_every), str(out), version,
        ]  # fmt: skip
        if kind == "solo":
            command = [sys.executable, *worker]
        else:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={n_workers}", *worker,
            ]  # fmt: skip
        cpu_before = _broker_cpu_seconds()
        subprocess.run(command, check=True, cwd=HERE.parent, capture_output=True)
        cpu = _broker_cpu_seconds() - cpu_before
        reports = [json.loads(path.read_text()) for path in sorted(out.glob("rank-*.json"))]
    start = min(r["first_learned"] for r in reports)
    end = max(r["last_learned"] for r in reports)
    learned = sum(r["timed"] for r in reports)
    sync = max(r["sync_seconds"] for r in reports)
    return {
        "learned": learned,
        "seconds": end - start,
        "rate": learned / (end - start),
        "sync_seconds": sync,
        "sync_share": sync / (end - start),
        "syncs": reports[0]["syncs"],
        "broker_cpu_s": cpu,
    }


def _plain(args: argparse.Namespace) -> dict:
    return {name: value for name, value in vars(args).items() if name != "run"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    acc = commands.add_parser("accuracy")
    acc.add_argument("--data", nargs="+", default=["synthetic", "sarcos"])
    acc.add_argument("--seeds", type=int, default=3)
    acc.add_argument("--n", type=int, default=20_000, help="synthetic rows")
    acc.add_argument("--sync-every", type=int, nargs="+", default=[50, 200, 2000])
    acc.add_argument("--jobs", type=int, default=2)
    acc.add_argument("--out", default=str(HERE / "results" / "scaleout_accuracy.json"))
    acc.set_defaults(run=accuracy)
    thr = commands.add_parser("throughput")
    thr.add_argument("--messages", type=int, default=40_000)
    thr.add_argument("--rounds", type=int, default=2)
    thr.add_argument("--sync-every", type=int, nargs="+", default=[2000, 500, 8000])
    thr.add_argument("--out", default=str(HERE / "results" / "scaleout_throughput.json"))
    thr.set_defaults(run=throughput)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
