"""Real data: the multi-task model against single-task models, a pooled model and River linear.

The data sets of ../shared/data (see its README for sources and citations):

- SARCOS (official test file, 4,449 rows, 7 joint torques): prequential normalised
  MSE per joint, MSE_j / Var(y_j), in file order. A pooled model does not apply: every
  row labels all 7 different targets.
- Landmine (29 fields, binary): prequential AUC per field on a shuffled stream (seed 0),
  and held-out AUC per field after one pass over a 70/30 split per field (seed 0).
- School (139 schools): explained variance on the 10 standard splits, pooled
  (1 - MSE/Var(y) over the test set) and per school (weighted by school size), after
  one pass and after 3 passes over the train part (shuffled, seed = split).

Contenders, all with the same (64, 64) trunk where they have one: the multi-task model
(default weighting), one single-task model per task, one pooled model for all tasks
(ignoring which task a row belongs to), and River's linear model per task. Target: the
multi-task model beats the single-task models and the pooled model on each data set.

Usage: python -m benchmarks.real_data [--data DIR] [--splits 10] [--passes 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import typing
from pathlib import Path

import numpy as np
from river import metrics

from benchmarks.throughput import write_result
from connectors import shared_data
from stream_mtl import MultiTaskLearner
from stream_mtl.evaluate import RiverLinear, SingleTaskModels, prequential
from stream_mtl.tasks import task_from_kind

HERE = Path(__file__).resolve().parent
HIDDEN = (64, 64)
PUBLISHED = {
    "school": "pooled ridge about 0.34 pooled explained variance (0.19 per school); "
    "Bakker & Heskes (2003) 29.5%; Argyriou et al. (2008) up to about 37%",
    "landmine": "no standard split (the data README gives no reference figure); AUC is "
    "the usual metric, used by Xue et al. (2007) and the online multi-task papers",
    "sarcos": "published figures train on the 44,484-row training file; not comparable",
}


class Pooled:
    """One single-task model for every task: a row's label, whatever its task, is learned
    as the same target."""

    def __init__(self, tasks: dict[str, str], seed: int) -> None:
        kind = next(iter(tasks.values()))
        self.tasks = {name: task_from_kind(kind) for name in tasks}
        self.model = MultiTaskLearner(tasks={"all": task_from_kind(kind)}, hidden=HIDDEN, seed=seed)

    def learn_one(self, x: dict, y: dict) -> None:
        for label in y.values():
            self.model.learn_one(x, {"all": label})

    def predict_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        value = self.model.predict_one(x)["all"]
        return dict.fromkeys(self.tasks if tasks is None else tasks, value)

    def predict_proba_one(self, x: dict, tasks: typing.Iterable[str] | None = None) -> dict:
        if self.model.tasks["all"].kind == "regression":
            return {}
        value = self.model.predict_proba_one(x)["all"]
        return dict.fromkeys(self.tasks if tasks is None else tasks, value)


def contenders(tasks: dict[str, str], seed: int, pooled: bool = True) -> dict[str, typing.Any]:
    model = MultiTaskLearner(
        tasks={name: task_from_kind(kind) for name, kind in tasks.items()}, hidden=HIDDEN, seed=seed
    )
    out = {"multi_task": model, "single_task": SingleTaskModels(model)}
    if pooled:
        out["pooled"] = Pooled(tasks, seed)
    out["river_linear"] = RiverLinear(model.tasks)
    return out


def _predict(contender, x: dict, task: str, proba: bool):
    if isinstance(contender, MultiTaskLearner):
        return contender.predict_proba_one(x)[task] if proba else contender.predict_one(x)[task]
    if proba:
        return contender.predict_proba_one(x, [task])[task]
    return contender.predict_one(x, [task])[task]


# -- SARCOS ------------------------------------------------------------------------------


def sarcos(folder: Path) -> dict:
    tasks, observations = shared_data.sarcos(folder)
    variance = np.var([[obs.y[t] for t in tasks] for obs in observations], axis=0)
    model = contenders(tasks, seed=0, pooled=False)["multi_task"]
    report = prequential(model, observations, every=500, progress=False)
    rows = {"multi_task": report.metrics, **{b: r["metrics"] for b, r in report.baselines.items()}}
    nmse = {
        name: {t: values[t]["RMSE"] ** 2 / variance[k] for k, t in enumerate(tasks)}
        for name, values in rows.items()
    }
    return {
        "nmse_per_joint": nmse,
        "mean_nmse": {n: float(np.mean(list(v.values()))) for n, v in nmse.items()},
    }


# -- Landmine ----------------------------------------------------------------------------


def landmine(folder: Path) -> dict:
    tasks, observations = shared_data.landmine(folder, seed=0)
    prequential_auc = {}
    for name, contender in contenders(tasks, seed=0).items():
        scores = {t: metrics.ROCAUC() for t in tasks}
        for obs in observations:
            ((task, label),) = obs.y.items()
            scores[task].update(label, _predict(contender, obs.x, task, proba=True))
            contender.learn_one(obs.x, obs.y)
        prequential_auc[name] = {t: m.get() for t, m in scores.items()}

    rng = np.random.default_rng(0)
    by_task: dict[str, list] = {t: [] for t in tasks}
    for obs in observations:
        by_task[next(iter(obs.y))].append(obs)
    train, test = [], []
    for rows in by_task.values():
        cut = int(0.7 * len(rows))
        order = rng.permutation(len(rows))
        train += [rows[i] for i in order[:cut]]
        test += [rows[i] for i in order[cut:]]
    train = [train[i] for i in rng.permutation(len(train))]
    held_out_auc = {}
    for name, contender in contenders(tasks, seed=0).items():
        for obs in train:
            contender.learn_one(obs.x, obs.y)
        scores = {t: metrics.ROCAUC() for t in tasks}
        for obs in test:
            ((task, label),) = obs.y.items()
            scores[task].update(label, _predict(contender, obs.x, task, proba=True))
        held_out_auc[name] = {t: m.get() for t, m in scores.items()}
    mean = lambda table: {n: float(np.mean(list(v.values()))) for n, v in table.items()}  # noqa: E731
    return {
        "prequential_auc": prequential_auc,
        "held_out_auc": held_out_auc,
        "mean_prequential_auc": mean(prequential_auc),
        "mean_held_out_auc": mean(held_out_auc),
    }


# -- School ------------------------------------------------------------------------------


def school_split(job: tuple[str, int, int]) -> dict:
    folder, split, passes = job
    with np.load(Path(folder) / "school.npz", allow_pickle=False) as data:
        X, y, task, is_train = (
            data["X"][:, :-1],
            data["y"],
            data["task"],
            data["splits_is_train"][split],
        )
    names = [f"x{j}" for j in range(X.shape[1])]
    tasks = {f"school{t:03d}": "regression" for t in range(int(task.max()) + 1)}
    rows = [
        (dict(zip(names, X[i].tolist())), f"school{int(task[i]):03d}", float(y[i]))
        for i in range(len(X))
    ]
    train = [rows[i] for i in np.flatnonzero(is_train)]
    test = [rows[i] for i in np.flatnonzero(~is_train)]
    out: dict[str, dict] = {}
    for name, contender in contenders(tasks, seed=split).items():
        rng = np.random.default_rng(split)
        for done in range(1, passes + 1):
            for i in rng.permutation(len(train)).tolist():
                x, t, label = train[i]
                contender.learn_one(x, {t: label})
            if done in (1, passes):
                out.setdefault(name, {})[f"after_{done}_pass"] = _explained_variance(
                    contender, test
                )
    return out


def _explained_variance(contender, test: list) -> dict[str, float]:
    truth = np.array([label for _, _, label in test])
    predicted = np.array([_predict(contender, x, t, proba=False) for x, t, _ in test])
    pooled = 1.0 - np.mean((truth - predicted) ** 2) / np.var(truth)
    schools = np.array([t for _, t, _ in test])
    per_school, weights = [], []
    for school in np.unique(schools):
        mask = schools == school
        if mask.sum() < 2 or np.var(truth[mask]) == 0:
            continue
        per_school.append(1.0 - np.mean((truth[mask] - predicted[mask]) ** 2) / np.var(truth[mask]))
        weights.append(mask.sum())
    return {"pooled": float(pooled), "per_school": float(np.average(per_school, weights=weights))}


def school(folder: Path, splits: int, passes: int, jobs: int) -> dict:
    with multiprocessing.Pool(jobs) as pool:
        results = pool.map(school_split, [(str(folder), s, passes) for s in range(splits)])
    summary: dict[str, dict] = {}
    for name in results[0]:
        for stage in results[0][name]:
            for kind in ("pooled", "per_school"):
                values = [r[name][stage][kind] for r in results]
                summary.setdefault(name, {})[f"{stage}_{kind}"] = {
                    "mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                }
    return {"splits": results, "summary": summary}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "real_data.json"))
    args = parser.parse_args(argv)
    folder = shared_data.find_data_folder(args.data)
    if folder is None:
        print("no shared data folder (../shared/data or --data): nothing to measure")
        return {}
    started = time.perf_counter()
    result = {"published": PUBLISHED}
    result["sarcos"] = sarcos(folder)
    print("SARCOS, prequential normalised MSE (lower is better), mean over 7 joints:")
    for name, value in result["sarcos"]["mean_nmse"].items():
        print(f"  {name:<14}{value:.4f}")
    result["landmine"] = landmine(folder)
    print("Landmine, mean AUC over 29 fields (higher is better): prequential / held-out")
    for name in result["landmine"]["mean_prequential_auc"]:
        print(
            f"  {name:<14}{result['landmine']['mean_prequential_auc'][name]:.4f} / "
            f"{result['landmine']['mean_held_out_auc'][name]:.4f}"
        )
    result["school"] = school(folder, args.splits, args.passes, args.jobs)
    print(f"School, explained variance over {args.splits} splits (mean ± std):")
    for name, stages in result["school"]["summary"].items():
        cells = "  ".join(f"{k}: {v['mean']:.3f}±{v['std']:.3f}" for k, v in stages.items())
        print(f"  {name:<14}{cells}")
    for data_set, note in PUBLISHED.items():
        print(f"published, {data_set}: {note}")
    result["seconds"] = time.perf_counter() - started
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
