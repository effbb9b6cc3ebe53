"""Per-observation throughput: predict_one + learn_one, stream-mtl against River and deep-river.

The reference model: 20 numeric features, a (64, 64) shared trunk, 3 regression tasks,
Adam, default weighting. Beside it, in the same run:
- River: three `StandardScaler | LinearRegression` pipelines, one per task;
- deep-river: its `MultiTargetRegressor` on the same MLP (Adam, lr 1e-3, one torch
  thread), run from its own virtualenv because deep-river 0.3.4 pins River 0.25.

The systems take turns over blocks of the same stream, each keeping its own state, so
a change in the machine's speed hits all of them alike; ratios are taken within each
round and their median reported. Prints a table, writes benchmarks/results/throughput.json.

Beside them, the same model driven by `prequential` with its baselines off, to show
what an evaluation run costs beyond predict_one + learn_one. `--long N` instead runs
one stream of N observations and prints the rate and resident memory every 100,000
(writes throughput_long.json): they must not grow with the stream's length.

Usage: python -m benchmarks.throughput [--rounds 8] [--block 1000] [--no-deep-river]
       python -m benchmarks.throughput --long 1000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import numpy as np
from river import linear_model, preprocessing

from stream_mtl import MultiTaskLearner, Observation, Regression
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.evaluate import prequential

HERE = Path(__file__).resolve().parent
DEEP_RIVER_VENV = HERE / ".venv-deep-river"
DEEP_RIVER_PACKAGES = [
    "torch==2.13.0", "river==0.25.0", "pandas<3", "numpy<3", "scikit-learn",
    "sortedcontainers", "tqdm~=4.66", "pytest",  # deep-river imports pytest at import time
]  # fmt: skip
TASKS = ["t0", "t1", "t2"]


def make_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    stream = SyntheticStream(tasks=dict.fromkeys(TASKS, "regression"), n=n, seed=seed)
    observations = list(stream)
    X = np.array([[obs.x[f"x{j}"] for j in range(20)] for obs in observations])
    Y = np.array([[obs.y[t] for t in TASKS] for obs in observations])
    return X, Y


def deep_river_python() -> Path:
    """deep-river's own virtualenv, created on first use."""
    python = DEEP_RIVER_VENV / "bin" / "python"
    if not python.exists():
        constraints = HERE.parent / "constraints.txt"
        subprocess.run([sys.executable, "-m", "venv", str(DEEP_RIVER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "-c", str(constraints)]
        subprocess.run([*pip, *DEEP_RIVER_PACKAGES], check=True)
        subprocess.run([*pip, "--no-deps", "deep-river==0.3.4"], check=True)
    return python


class OursRunner:
    name = "stream-mtl (numpy)"

    def __init__(self, xs, ys) -> None:
        self.xs, self.ys = xs, ys
        tasks = {t: Regression() for t in TASKS}
        self.model = MultiTaskLearner(tasks=tasks, hidden=(64, 64), optimizer="adam", seed=0)

    def run(self, start: int, stop: int) -> float:
        model, xs, ys = self.model, self.xs, self.ys
        began = time.perf_counter()
        for i in range(start, stop):
            model.predict_one(xs[i])
            model.learn_one(xs[i], ys[i])
        return time.perf_counter() - began


class PrequentialRunner(OursRunner):
    """The same model driven by `prequential` (baselines off, no progress bar): what an
    evaluation run costs beyond predict_one + learn_one (metrics, windows, the report)."""

    name = "stream-mtl prequential, baselines off"

    def __init__(self, xs, ys) -> None:
        super().__init__(xs, ys)
        self.observations = [Observation(x, y) for x, y in zip(xs, ys)]

    def run(self, start: int, stop: int) -> float:
        began = time.perf_counter()
        prequential(self.model, self.observations[start:stop], progress=False, baselines=())
        return time.perf_counter() - began


class RiverRunner:
    name = "River: 3 x StandardScaler | LinearRegression"

    def __init__(self, xs, ys) -> None:
        self.xs, self.ys = xs, ys
        self.models = {
            t: preprocessing.StandardScaler() | linear_model.LinearRegression() for t in TASKS
        }

    def run(self, start: int, stop: int) -> float:
        models, xs, ys = self.models, self.xs, self.ys
        began = time.perf_counter()
        for i in range(start, stop):
            for task, model in models.items():
                model.predict_one(xs[i])
                model.learn_one(xs[i], ys[i][task])
        return time.perf_counter() - began


class DeepRiverRunner:
    name = "deep-river MultiTargetRegressor (same MLP)"

    def __init__(self, data_path: Path) -> None:
        worker = HERE / "_deep_river_worker.py"
        self.process = subprocess.Popen(
            [str(deep_river_python()), str(worker), str(data_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the deep-river worker did not start")

    def run(self, start: int, stop: int) -> float:
        self.process.stdin.write(f"{start} {stop}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def grouped_runs(function: typing.Callable, jobs: list, processes: int) -> dict[str, list]:
    """`function` on every job, in a pool of `processes`; its answers, (group, key,
    result), as group -> results in the jobs' order."""
    with multiprocessing.Pool(processes) as pool:
        done = pool.map(function, jobs)
    runs: dict[str, list] = {}
    for group, _, result in done:
        runs.setdefault(group, []).append(result)
    return runs


def write_result(result: dict, path: str) -> dict:
    """Write a benchmark's result as JSON (creating its folder) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    return result


def resident_bytes() -> int:
    """This process's resident memory now (Linux), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def long_run(n: int, block: int) -> list[dict]:
    """predict_one + learn_one over `n` observations of one stream on a fresh reference
    model: the rate, this process's resident memory and the model's pickled size after
    each `block`."""
    model = OursRunner([], []).model
    stream = iter(SyntheticStream(tasks=dict.fromkeys(TASKS, "regression"), n=n, seed=1))
    blocks = []
    for index in range(n // block):
        chunk = [(obs.x, obs.y) for obs in itertools.islice(stream, block)]
        began = time.perf_counter()
        for x, y in chunk:
            model.predict_one(x)
            model.learn_one(x, y)
        elapsed = time.perf_counter() - began
        blocks.append({
            "observations": (index + 1) * block,
            "us_per_observation": elapsed / block * 1e6,
            "resident_mb": resident_bytes() / 2**20,
            "model_mb": len(pickle.dumps(model)) / 2**20,
        })  # fmt: skip
        last = blocks[-1]
        print(
            f"{last['observations']:>10,} observations: {last['us_per_observation']:.1f} us/obs,"
            f" process {last['resident_mb']:.0f} MB (the block's {block:,} observations held),"
            f" model {last['model_mb']:.2f} MB"
        )
    return blocks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=1000, help="observations per turn")
    parser.add_argument(
        "--deep-river-block",
        type=int,
        default=200,
        help="observations per deep-river turn (it is much slower)",
    )
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--no-deep-river", action="store_true")
    parser.add_argument(
        "--long",
        type=int,
        default=0,
        help="instead: one run of this many observations, rate and memory per 100,000",
    )
    parser.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    args = parser.parse_args(argv)
    if args.long:
        blocks = long_run(args.long, min(100_000, args.long))
        return write_result(
            {"config": vars(args), "blocks": blocks}, args.out.replace(".json", "_long.json")
        )

    n = args.warmup + args.rounds * args.block
    X, Y = make_stream(n, seed=0)
    xs = [{f"x{j}": float(v) for j, v in enumerate(row)} for row in X]
    ys = [dict(zip(TASKS, map(float, row))) for row in Y]
    runners = [OursRunner(xs, ys), PrequentialRunner(xs, ys), RiverRunner(xs, ys)]
    with tempfile.TemporaryDirectory() as folder:
        if not args.no_deep_river:
            data_path = Path(folder) / "stream.npz"
            np.savez(data_path, X=X, Y=Y)
            runners.append(DeepRiverRunner(data_path))
        per_obs: dict[str, list[float]] = {r.name: [] for r in runners}
        for runner in runners:  # warm-up: caches, first feature registration, JIT-free paths
            size = args.deep_river_block if isinstance(runner, DeepRiverRunner) else args.warmup
            runner.run(0, size)
        for round_ in range(args.rounds):
            start = args.warmup + round_ * args.block
            for runner in runners:
                size = args.deep_river_block if isinstance(runner, DeepRiverRunner) else args.block
                per_obs[runner.name].append(runner.run(start, start + size) / size)
        for runner in runners:
            if isinstance(runner, DeepRiverRunner):
                runner.close()

    ours = per_obs[runners[0].name]
    rows = []
    for runner in runners:
        times = per_obs[runner.name]
        ratios = [other / mine for mine, other in zip(ours, times)]
        rows.append({
            "system": runner.name,
            "us_per_observation": statistics.median(times) * 1e6,
            "observations_per_second": 1.0 / statistics.median(times),
            "stream_mtl_speedup": statistics.median(ratios),
            "speedup_range": [min(ratios), max(ratios)],
        })  # fmt: skip
    print(f"\npredict_one + learn_one, median over {args.rounds} interleaved rounds")
    print(f"{'system':<46}{'us/obs':>10}{'obs/s':>10}{'stream-mtl is x faster':>24}")
    for row in rows:
        low, high = row["speedup_range"]
        print(
            f"{row['system']:<46}{row['us_per_observation']:>10.1f}"
            f"{row['observations_per_second']:>10.0f}"
            f"{row['stream_mtl_speedup']:>12.2f} ({low:.2f}-{high:.2f})"
        )
    met = targets(rows)
    for target, ok in met.items():
        print(f"{'met' if ok else 'NOT MET':>8}  {target}")
    return write_result({"config": vars(args), "rows": rows, "targets": met}, args.out)


def targets(rows: list[dict]) -> dict[str, bool]:
    """Issue 14's: the learner at least 2x River's pipelines and 20x deep-river; driven
    by `prequential`, at most 1.3x the bare loop's time."""
    speedup = {row["system"]: row["stream_mtl_speedup"] for row in rows}
    wanted = [
        (RiverRunner.name, "stream-mtl >= 2x", lambda x: x >= 2.0),
        (DeepRiverRunner.name, "stream-mtl >= 20x", lambda x: x >= 20.0),
        (PrequentialRunner.name, "its time <= 1.3x the bare loop's", lambda x: x <= 1.3),
    ]
    return {
        f"{name}: {what}": test(speedup[name]) for name, what, test in wanted if name in speedup
    }


if __name__ == "__main__":
    main()
