"""Drift: each weighting strategy alone and wrapped in DriftAware, side by side.

On `SyntheticStream` with four related regression tasks (every task labelled at
every step, so step = observation), three streams per seed:

- an abrupt drift of task "d" at the middle of the stream (a new mix of the shared
  factors and a new part of its own);
- the same stream without the drift (stationary): the counterfactual;
- rare bursts: the stationary stream with task "d" replaced by a count that is 0 but
  on 0.5% of rows, which come in bursts of 4 within 25 rows (the kind of target on
  which a drift detector fires and a heavy-handed reaction does harm).

Per configuration, medians over the seeds:

- detection delay (observations from the drift to the first drift event in "d") and
  false alarms (events anywhere else: before the drift, in other tasks, or a second
  event within 2,000 observations of the first); only DriftAware detects anything;
- recovery: observations after the drift until d's rolling error (normalised MSE over
  a window of 500) is back within 10% of its level over the 1,000 before the drift;
- interference: over the 2,000 observations after the drift, the mean over the three
  other tasks of max(0, rolling error / the same model's rolling error on the
  counterfactual stream - 1), so that learning that simply goes on is not counted;
- stationary final error: normalised MSE of all tasks over the last 2,000 observations
  of the counterfactual stream (what false alarms cost);
- bursts error: normalised MSE of all tasks over the whole rare-bursts stream.

Targets (issue 12): DriftAware recovers at least 3x faster and interferes at least 3x
less than its base alone, with stationary final error no more than 2% worse and bursts
error no worse.

Usage: python -m benchmarks.drift [--seeds 3] [--n 16000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.throughput import write_result
from stream_mtl import MultiTaskLearner, Regression
from stream_mtl.connectors.synthetic import Drift, SyntheticStream
from stream_mtl.weighting import DWA, DriftAware, Equal, GradNorm, Uncertainty

HERE = Path(__file__).resolve().parent
TASKS = ["a", "b", "c", "d"]
DRIFTING = "d"
WINDOW = 500
PRE = 1000
POST = 2000
FINAL = 2000
BASES = {"Equal": Equal, "Uncertainty": Uncertainty, "DWA": DWA, "GradNorm": GradNorm}


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` rows (fewer at the start), column by column."""
    sums = np.cumsum(np.vstack([np.zeros(values.shape[1]), values]), axis=0)
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)[:, None]


def with_rare_bursts(stream, seed: int, share: float = 0.005, burst: int = 4, span: int = 25):
    """The stream's observations with task d replaced by a count that is non-zero on `share`
    of rows, in bursts of `burst` rows within `span`."""
    observations = list(stream)
    rng = np.random.default_rng(seed + 1000)
    counts = np.zeros(len(observations))
    for start in rng.choice(len(observations) - span, int(share * len(observations) / burst)):
        counts[start + rng.choice(span, burst, replace=False)] = 1.0 + rng.poisson(2.0, burst)
    for obs, count in zip(observations, counts.tolist()):
        obs.y[DRIFTING] = count
    return observations


def squared_errors(
    strategy: str,
    wrapped: bool,
    n: int,
    seed: int,
    drift_at: int | None,
    shared_only: bool = False,
    bursts: bool = False,
):
    """Prequential squared errors (n x tasks, in units of each task's target variance)
    and the drift events of one run."""
    drifts = [Drift(DRIFTING, drift_at, shared_only=shared_only)] if drift_at is not None else []
    stream = SyntheticStream(
        tasks=dict.fromkeys(TASKS, "regression"), drifts=drifts, n=n, seed=seed
    )
    if bursts:
        stream = with_rare_bursts(stream, seed)
    weighting = BASES[strategy]()
    if wrapped:
        weighting = DriftAware(weighting)
    model = MultiTaskLearner(
        tasks={t: Regression() for t in TASKS}, hidden=(32, 32), weighting=weighting, seed=seed
    )
    errors = np.zeros((n, len(TASKS)))
    targets = np.zeros((n, len(TASKS)))
    for i, obs in enumerate(stream):
        prediction = model.predict_one(obs.x)
        for k, task in enumerate(TASKS):
            targets[i, k] = obs.y[task]
            errors[i, k] = (prediction[task] - obs.y[task]) ** 2
        model.learn_one(obs.x, obs.y)
    return errors / targets.var(axis=0), model.drift_events


def run(job: tuple[str, bool, int, int]) -> dict:
    strategy, wrapped, n, seed = job
    drift_at = n // 2
    started = time.perf_counter()
    errors, events = squared_errors(strategy, wrapped, n, seed, drift_at)
    rolling = rolling_mean(errors, WINDOW)
    d = TASKS.index(DRIFTING)
    pre = rolling[drift_at - PRE : drift_at].mean(axis=0)

    after = rolling[drift_at:, d] <= 1.1 * pre[d]
    # Recovered: back within 10% of the pre-drift level, after the window has filled
    # with post-drift errors at least once (so that a not-yet-risen window does not count).
    after[:WINDOW] = False
    recovery = int(np.argmax(after)) if after.any() else n - drift_at

    stationary, _ = squared_errors(strategy, wrapped, n, seed, None)
    counterfactual = rolling_mean(stationary, WINDOW)[drift_at : drift_at + POST]
    others = [k for k in range(len(TASKS)) if k != d]
    post = rolling[drift_at : drift_at + POST][:, others]
    interference = float(np.maximum(0.0, post / counterfactual[:, others] - 1.0).mean())
    bursts, _ = squared_errors(strategy, wrapped, n, seed, None, bursts=True)

    step_of_drift = drift_at + 1  # learn steps are counted from 1
    hits = [e for e in events if e.task == DRIFTING and e.step >= step_of_drift]
    first = hits[0].step if hits else None
    false_alarms = [
        e
        for e in events
        if e.step < step_of_drift
        or e.task != DRIFTING
        or (first is not None and e.step != first and e.step < first + 2000)
    ]
    return {
        "strategy": strategy,
        "drift_aware": wrapped,
        "seed": seed,
        "detection_delay": None if first is None else first - step_of_drift,
        "false_alarms": len(false_alarms),
        "recovery": recovery,
        "interference": interference,
        "stationary_final_error": float(stationary[-FINAL:].mean()),
        "bursts_error": float(bursts.mean()),
        "seconds": time.perf_counter() - started,
    }


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=16_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--strategies", nargs="*", default=list(BASES))
    parser.add_argument("--out", default=str(HERE / "results" / "drift.json"))
    args = parser.parse_args(argv)

    jobs = [
        (strategy, wrapped, args.n, seed)
        for strategy in args.strategies
        for seed in range(args.seeds)
        for wrapped in (False, True)
    ]
    with multiprocessing.Pool(args.jobs) as pool:
        runs = pool.map(run, jobs)

    rows = []
    for strategy in args.strategies:
        alone, aware = (
            [r for r in runs if r["strategy"] == strategy and r["drift_aware"] == wrapped]
            for wrapped in (False, True)
        )
        summary = {
            "strategy": strategy,
            **{
                f"{key}_{label}": median([r[key] for r in group])
                for key in ("recovery", "interference", "stationary_final_error", "bursts_error")
                for label, group in (("alone", alone), ("aware", aware))
            },
            "detection_delay": median([r["detection_delay"] for r in aware]),
            "detected": sum(r["detection_delay"] is not None for r in aware),
            "false_alarms": median([r["false_alarms"] for r in aware]),
        }
        summary["recovery_speedup"] = summary["recovery_alone"] / max(summary["recovery_aware"], 1)
        summary["interference_ratio"] = summary["interference_alone"] / max(
            summary["interference_aware"], 1e-9
        )
        summary["stationary_cost"] = (
            summary["stationary_final_error_aware"] / summary["stationary_final_error_alone"] - 1
        )
        summary["bursts_cost"] = summary["bursts_error_aware"] / summary["bursts_error_alone"] - 1
        summary["targets_met"] = bool(
            summary["recovery_speedup"] >= 3
            and summary["interference_ratio"] >= 3
            and summary["stationary_cost"] <= 0.02
            and summary["bursts_cost"] <= 0.0
        )
        rows.append(summary)

    header = (
        f"{'strategy':<12}{'delay':>7}{'found':>7}{'false':>7}{'recovery alone/aware':>23}"
        f"{'x':>7}{'interference alone/aware':>27}{'x':>7}{'stationary cost':>17}"
        f"{'bursts cost':>13}{'met':>6}"
    )
    print(f"abrupt drift of task {DRIFTING!r} at n/2 = {args.n // 2}; {args.seeds} seeds, medians")
    print(header)
    for r in rows:
        delay = "-" if r["detection_delay"] is None else f"{r['detection_delay']:.0f}"
        print(
            f"{r['strategy']:<12}{delay:>7}{r['detected']:>5}/{args.seeds}"
            f"{r['false_alarms']:>7.1f}"
            f"{r['recovery_alone']:>13.0f} / {r['recovery_aware']:<7.0f}"
            f"{r['recovery_speedup']:>7.2f}"
            f"{r['interference_alone']:>15.4f} / {r['interference_aware']:<9.4f}"
            f"{r['interference_ratio']:>7.2f}{100 * r['stationary_cost']:>16.2f}%"
            f"{100 * r['bursts_cost']:>12.2f}%"
            f"{'yes' if r['targets_met'] else 'no':>6}"
        )
    return write_result({"config": vars(args), "summary": rows, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
