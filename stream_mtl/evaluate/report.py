"""What a prequential run measured, and how it is written down: JSON and PNG plots."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

from river import metrics as river_metrics


class Report(typing.NamedTuple):
    """What a prequential run measured.

    - `config`: how the run was set up (model, stream, metrics, window, delay, baselines);
    - `metrics`: task -> metric name -> value over the whole run;
    - `windows`: every `every` observations, the step and, per task, each metric over the
      last `every` labels (the rolling view, beside the overall one);
    - `baselines`: baseline name -> its `metrics`, `windows` and `throughput`, from the
      same stream in the same run;
    - `n_observations`, `seconds` (wall time of the run), `throughput` (the model's
      observations per second, predict and learn), `memory_bytes` (the model's size);
    - `drift_events`, `task_weights` (over time), `task_affinity` (at the end);
    - `mixture` (over time): per task, the weight of each of its heads (see
      `MultiTaskLearner.mixture`) - which depth its predictions rely on;
    - `rejected`: reason -> count of observations set aside.
    """

    config: dict
    metrics: dict[str, dict[str, float]]
    windows: list[dict]
    baselines: dict[str, dict]
    n_observations: int
    seconds: float
    throughput: float
    memory_bytes: int
    drift_events: list
    task_weights: list[dict]
    task_affinity: dict | None
    mixture: list[dict]
    rejected: dict[str, int]

    def to_json(self) -> dict:
        """The report as JSON-able data, its configuration first (NaN becomes null)."""
        content = self._asdict()
        content["drift_events"] = [event._asdict() for event in self.drift_events]
        return _finite(content)

    def save(self, folder: str | Path, plots: bool = True) -> Path:
        """Write `report.json` and (with `plots`) PNG plots into `folder`; return the JSON path.

        The plots: each task's rolling metric for the model and its baselines, with the
        drift events marked; the task weights over time; the depth each task relies on
        over time; the task-affinity heatmap.
        """
        from stream_mtl.evaluate.plots import save_plots

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "report.json"
        path.write_text(json.dumps(self.to_json(), indent=2))
        if plots:
            save_plots(self.to_json(), folder)
        return path

    def table(self, max_tasks: int = 12) -> str:
        """The model's metrics beside its baselines', as plain text: per task, or with more
        than `max_tasks` tasks the mean over tasks and how many tasks the model wins."""
        names = ["model", *self.baselines]
        tasks = list(self.metrics)
        shown = tasks if len(tasks) <= max_tasks else ["model wins"]
        width = max(14, *(len(t) + 2 for t in shown))  # long task names keep their column
        metric_width = max(10, *(len(m) + 2 for t in tasks for m in self.metrics[t]))
        head = f"{'task':<{width}}{'metric':<{metric_width}}" + "".join(f"{n:>14}" for n in names)
        lines = [head]
        values = {"model": self.metrics, **{b: r["metrics"] for b, r in self.baselines.items()}}
        if len(tasks) <= max_tasks:
            for task in tasks:
                for metric in self.metrics[task]:
                    row = "".join(f"{values[n][task][metric]:>14.4f}" for n in names)
                    lines.append(f"{task:<{width}}{metric:<{metric_width}}{row}")
            return "\n".join(lines)
        for metric in self.metrics[tasks[0]]:
            means = [_nanmean([values[n][t][metric] for t in tasks]) for n in names]
            lines.append(
                f"{'mean of ' + str(len(tasks)):<{width}}{metric:<{metric_width}}"
                + "".join(f"{m:>14.4f}" for m in means)
            )
            better = bigger_is_better(metric)
            wins = [
                sum(_beats(values["model"][t][metric], values[b][t][metric], better) for t in tasks)
                for b in self.baselines
            ]
            lines.append(
                f"{'model wins':<{width}}{metric:<{metric_width}}{'':>14}"
                + "".join(f"{w:>10}/{len(tasks):<3}" for w in wins)
            )
        return "\n".join(lines)

    def verdict(self) -> str:
        """Per metric, averaged over tasks: whether the model is the best of the run, and
        if not, who beats it and by how much - the tables' message in words."""
        values = {"model": self.metrics, **{b: r["metrics"] for b, r in self.baselines.items()}}
        tasks = list(self.metrics)
        if not tasks or not self.baselines:
            return ""
        lines = []
        for metric in dict.fromkeys(m for t in tasks for m in self.metrics[t]):
            having = [t for t in tasks if metric in self.metrics[t]]
            means = {n: _nanmean([v[t][metric] for t in having]) for n, v in values.items()}
            better = bigger_is_better(metric)
            mine = means.pop("model")
            ahead = [n for n, m in means.items() if _beats(m, mine, better)]
            if not ahead:
                rival = max(means, key=lambda n: means[n] if better else -means[n])
                lines.append(
                    f"{metric}: the model is best ({mine:.4f}; next {rival} {means[rival]:.4f})"
                )
            else:
                behind = ", ".join(f"{n} {means[n]:.4f}" for n in ahead)
                lines.append(f"{metric}: the model ({mine:.4f}) is behind {behind}")
        return "\n".join(lines)


def bigger_is_better(metric: str) -> bool:
    """Whether a larger value of the River metric named `metric` is better."""
    klass = getattr(river_metrics, metric, None)
    return bool(klass().bigger_is_better) if klass is not None else True


def _beats(a: float, b: float, better: bool) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return a > b if better else a < b


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _finite(value: typing.Any) -> typing.Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
