"""Sharing: hard vs soft sharing vs single-task models, and Relatedness vs Equal weighting.

On `SyntheticStream` (every task labelled on every row), several seeds, medians, all
contenders of one seed in one job, prequentially (predict, then learn, every row).
Errors are normalised MSEs, MSE / Var(y), per task.

1. **Sharing.** A main task and two auxiliaries that are, by task set, related (built
   on the same latent factors with mixes of their own), unrelated (built on latent
   factors of their own) or conflicting (the main task's shared part, negated). The
   contenders: hard sharing (one trunk, the default model), soft sharing (a trunk per
   task pulled toward their consensus, at each `--strengths`; 1,000 is 1 / lr, the
   full pull), and one single-task model per task. Reported: the mean over the three
   tasks and the main task alone, over the whole stream and over its last half, and
   the cost per observation (learn and predict, microseconds).
2. **Relatedness.** A main task beside one related auxiliary (helpful) and two
   unrelated ones (harmful to it: they spend the trunk on other structure), hard
   sharing, weighted by `Equal`, by `Relatedness(main=["main"])`, and the main task's
   single-task model for reference. Reported: the main task's error, and each
   auxiliary's weight after 1,000, 2,000 and 3,000 observations.

Targets (issue 19): soft sharing beats hard sharing where tasks conflict and beats
single-task models where they are related; with Relatedness the main task's error is
lower than with Equal, and the harmful auxiliaries' weights fall below the helpful
one's within the first few thousand observations.

Usage: python -m benchmarks.sharing [--seeds 5] [--n 4000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import typing
from pathlib import Path

import numpy as np

from benchmarks.throughput import grouped_runs, write_result
from stream_mtl import MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import SyntheticStream
from stream_mtl.weighting import Equal, Relatedness

HERE = Path(__file__).resolve().parent
HIDDEN = (64, 64)
TASKS = ("main", "aux1", "aux2")
TASK_SETS = ("related", "unrelated", "conflicting")
AUXILIARIES = {"helpful": "related", "harmful1": "unrelated", "harmful2": "unrelated"}
WEIGHT_AT = (1000, 2000, 3000)


class Single:
    """One single-task model per task, each learning every row (its label only)."""

    def __init__(self, tasks: typing.Iterable[str], seed: int) -> None:
        self.models = {
            t: MultiTaskLearner(tasks={t: Regression()}, hidden=HIDDEN, seed=seed) for t in tasks
        }

    def predict_one(self, x: dict) -> dict:
        return {t: model.predict_one(x)[t] for t, model in self.models.items()}

    def learn_one(self, x: dict, y: dict) -> None:
        for t, model in self.models.items():
            model.learn_one(x, {t: y[t]})


def prequential(model, stream, tasks: typing.Sequence[str], watch=None) -> dict:
    """Per-task normalised squared errors (rows x tasks) and seconds per row; `watch(i,
    model)` is called after row i is learned."""
    errors, labels = [], []
    started = time.perf_counter()
    for i, obs in enumerate(stream):
        prediction = model.predict_one(obs.x)
        errors.append([prediction[t] - obs.y[t] for t in tasks])
        labels.append([obs.y[t] for t in tasks])
        model.learn_one(obs.x, obs.y)
        if watch is not None:
            watch(i + 1, model)
    seconds = time.perf_counter() - started
    Y = np.array(labels)
    return {"nmse": np.array(errors) ** 2 / Y.var(axis=0), "seconds": seconds / len(Y)}


def _scores(nmse: np.ndarray) -> dict[str, float]:
    half = len(nmse) // 2
    return {
        "all_whole": float(nmse.mean()),
        "all_last_half": float(nmse[half:].mean()),
        "main_whole": float(nmse[:, 0].mean()),
        "main_last_half": float(nmse[half:, 0].mean()),
    }


def sharing_job(job: tuple[str, int, int, tuple[float, ...]]) -> tuple[str, int, dict]:
    task_set, seed, n, strengths = job
    relations = {"aux1": task_set, "aux2": task_set}
    stream = list(SyntheticStream(dict.fromkeys(TASKS, "regression"), relations=relations,
                                  n=n, seed=seed))  # fmt: skip
    contenders: dict[str, typing.Any] = {
        "hard": MultiTaskLearner(tasks={t: Regression() for t in TASKS}, hidden=HIDDEN, seed=seed)
    }
    for strength in strengths:
        contenders[f"soft({strength:g})"] = MultiTaskLearner(
            tasks={t: Regression() for t in TASKS}, hidden=HIDDEN, seed=seed, sharing="soft",
            soft_strength=strength,
        )  # fmt: skip
    contenders["single"] = Single(TASKS, seed)
    out = {}
    for name, model in contenders.items():
        run = prequential(model, stream, TASKS)
        out[name] = {**_scores(run["nmse"]), "us_per_obs": run["seconds"] * 1e6}
    return task_set, seed, out


def relatedness_job(job: tuple[int, int]) -> tuple[str, int, dict]:
    seed, n = job
    tasks = ("main", *AUXILIARIES)
    stream = list(SyntheticStream(dict.fromkeys(tasks, "regression"), relations=AUXILIARIES,
                                  n=n, seed=seed))  # fmt: skip
    out: dict[str, dict] = {}
    for name, weighting in (("Equal", Equal()), ("Relatedness", Relatedness(main=["main"]))):
        model = MultiTaskLearner(
            tasks={t: Regression() for t in tasks}, hidden=HIDDEN, seed=seed, weighting=weighting
        )
        weights: dict[str, float] = {}

        def watch(i: int, model: MultiTaskLearner, weights: dict = weights) -> None:
            if i in WEIGHT_AT:
                for task in AUXILIARIES:
                    weights[f"{task}_weight_at_{i}"] = model.task_weights[task]

        run = prequential(model, stream, tasks, watch)
        out[name] = {**_scores(run["nmse"]), **weights}
    single = prequential(Single(["main"], seed), stream, ["main"])
    out["single"] = {k: v for k, v in _scores(single["nmse"]).items() if k.startswith("main")}
    return "relatedness", seed, out


def _run(job: tuple) -> tuple[str, int, dict]:
    return relatedness_job(job[1:]) if job[0] == "relatedness" else sharing_job(job[1:])


def summarise(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per contender and measure, the median over the seeds."""
    return {
        name: {m: statistics.median(r[name][m] for r in runs) for m in runs[0][name]}
        for name in runs[0]
    }


def targets(summary: dict) -> dict[str, bool]:
    met = {}
    conflicting, related = summary["conflicting"], summary["related"]
    softs = [name for name in related if name.startswith("soft")]
    best_conflicting = min(softs, key=lambda s: conflicting[s]["all_whole"])
    met[f"conflicting: {best_conflicting} beats hard"] = (
        conflicting[best_conflicting]["all_whole"] < conflicting["hard"]["all_whole"]
    )
    best_related = min(softs, key=lambda s: related[s]["all_whole"])
    met[f"related: {best_related} beats single"] = (
        related[best_related]["all_whole"] < related["single"]["all_whole"]
    )
    rel = summary["relatedness"]
    met["Relatedness: main error below Equal's"] = (
        rel["Relatedness"]["main_whole"] < rel["Equal"]["main_whole"]
    )
    measured = [a for a in WEIGHT_AT if f"helpful_weight_at_{a}" in rel["Relatedness"]]
    if measured:  # a stream long enough to have weights to compare
        at, weights = measured[-1], rel["Relatedness"]
        met[f"Relatedness: harmful weights below the helpful one's at {at}"] = all(
            weights[f"{t}_weight_at_{at}"] < weights[f"helpful_weight_at_{at}"]
            for t in ("harmful1", "harmful2")
        )
    return met


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n", type=int, default=4000, help="observations per stream")
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "sharing.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    strengths = tuple(args.strengths)
    jobs: list[tuple] = [("relatedness", seed, args.n) for seed in range(args.seeds)]
    jobs += [(s, s, seed, args.n, strengths) for s in TASK_SETS for seed in range(args.seeds)]
    runs = grouped_runs(_run, jobs, args.jobs)
    summary = {group: summarise(results) for group, results in runs.items()}
    for group, table in summary.items():
        print(f"{group}: medians over {len(runs[group])} seeds")
        for name, measures in table.items():
            cells = "  ".join(f"{m} {v:.4g}" for m, v in measures.items())
            print(f"  {name:<12}{cells}")
    met = targets(summary)
    for target, ok in met.items():
        print(f"{'met' if ok else 'NOT MET':>8}  {target}")
    result = {"runs": runs, "summary": summary, "targets": met}
    result["seconds"] = time.perf_counter() - started
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
