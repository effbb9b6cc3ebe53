"""PNG plots of a prequential report, readable at a glance.

- `rolling_metrics.png`: per task, the first metric over the rolling window, for the
  model and each baseline, with the drift events marked (vertical lines in the task's
  panel). With many tasks, one panel of the mean over tasks.
- `task_weights.png`: each task's loss weight over time.
- `depth.png`: the depth each task's predictions rely on over time: the mean depth of
  its heads under its mixture weights (0: the linear heads on the inputs; d: the heads
  on trunk layer d).
- `task_affinity.png`: the task-affinity heatmap at the end of the run.

The plots read the report's plain data (`Report.to_json()`, or that JSON read back from a
file) and draw on `matplotlib.figure.Figure` objects, so that they never touch pyplot's
global state or switch the backend of a process that draws its own figures.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

Data = dict[str, typing.Any]  # a report's JSON form

MAX_PANELS = 12  # more tasks than this: one panel of the mean over tasks
MAX_LABELLED = 30  # more tasks than this: the heatmap's axes go unlabelled
NO_DATA = "#bbbbbb"  # the heatmap's colour for a pair of tasks never labelled together
COLOURS = {
    "model": "tab:blue",
    "single_task": "tab:orange",
    "linear": "tab:purple",
    "river_linear": "tab:green",
}


def save_plots(report: Data, folder: Path) -> list[Path]:
    """Write the plots that have data in `report` (a report's JSON form) into `folder`;
    return their paths.

    >>> import tempfile
    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> from stream_mtl.connectors.synthetic import SyntheticStream
    >>> from stream_mtl.evaluate import prequential
    >>> model = MultiTaskLearner(tasks={"a": Regression(), "b": Regression()}, hidden=(8,))
    >>> stream = SyntheticStream(tasks={"a": "regression", "b": "regression"}, n=400, seed=0)
    >>> data = prequential(model, stream, every=100, progress=False, baselines=()).to_json()
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     print(sorted(path.name for path in save_plots(data, Path(folder))))
    ['depth.png', 'rolling_metrics.png', 'task_affinity.png', 'task_weights.png']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in (
        ("rolling_metrics.png", _rolling_metrics),
        ("task_weights.png", _task_weights),
        ("depth.png", _depth),
        ("task_affinity.png", _task_affinity),
    ):
        figure = plot(report)
        if figure is None:
            continue
        path = folder / name
        figure.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


def _value(window: dict, task: str, metric: str) -> float:
    """A window's metric for a task; NaN where it is missing (null in JSON)."""
    value = window.get(task, {}).get(metric)
    return math.nan if value is None else value


def _rolling_metrics(report: Data) -> Figure | None:
    if not report["windows"]:
        return None
    tasks = list(report["metrics"])
    contenders = {"model": report["windows"]}
    contenders.update({name: b["windows"] for name, b in report["baselines"].items()})
    many = len(tasks) > MAX_PANELS
    panels = ["mean over tasks"] if many else tasks
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True)
    window = report["config"].get("every", "")
    for index, panel in enumerate(panels):
        axis = axes[index // columns][index % columns]
        task = tasks[0] if many else panel
        metric = next(iter(report["metrics"][task]))
        for name, windows in contenders.items():
            steps = [w["step"] for w in windows]
            if many:
                values = [
                    np.nanmean([_value(w, t, metric) for t in tasks])
                    if any(w.get(t) for t in tasks)
                    else math.nan
                    for w in windows
                ]
            else:
                values = [_value(w, task, metric) for w in windows]
            axis.plot(steps, values, label=name, color=COLOURS.get(name), linewidth=1.5)
        for event in report["drift_events"]:
            if many or event["task"] == task:
                axis.axvline(event["step"], color="tab:red", linestyle="--", linewidth=1)
        axis.set_title(f"{panel}: {metric} (last {window} labels)", fontsize=10)
        axis.grid(alpha=0.3)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    for axis in axes.flat:
        axis.tick_params(labelbottom=True)  # shared x: every panel keeps its numbers
    for axis in axes[-1]:
        axis.set_xlabel("observations")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if report["drift_events"]:
        handles.append(Line2D([], [], color="tab:red", linestyle="--"))
        labels.append("drift detected (step)")
    figure.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return figure


def _task_weights(report: Data) -> Figure | None:
    weights = report["task_weights"]
    if not weights:
        return None
    tasks = [k for k in weights[0] if k != "step"]
    steps = [w["step"] for w in weights]
    figure = Figure(figsize=(8, 3.5))
    axis = figure.subplots()
    if len(tasks) <= MAX_PANELS:
        for task in tasks:
            axis.plot(steps, [w[task] for w in weights], label=task, linewidth=1.5)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    else:
        values = np.array([[w[t] for t in tasks] for w in weights])
        for q, style, label in (
            (90, ":", "90th percentile"),
            (50, "-", "median"),
            (10, "--", "10th percentile"),
        ):
            axis.plot(steps, np.percentile(values, q, axis=1), style, color="tab:blue", label=label)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    for event in report["drift_events"]:
        axis.axvline(event["step"], color="tab:red", linestyle="--", linewidth=1)
    axis.set_xlabel("observations")
    axis.set_ylabel("loss weight")
    title = "Task weights over time (red: drift detected)"
    if len(tasks) > MAX_PANELS:
        title += f"; across the {len(tasks)} tasks"
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _head_depths(heads: list[str]) -> list[int]:
    """Each head's depth: 0 for the linear heads, d for `layer{d}`, the last layer's for
    the second-order `top(f)` heads that read it."""
    depths = [int(head[len("layer") :]) if head.startswith("layer") else 0 for head in heads]
    deepest = max(depths, default=0)
    return [deepest if head.startswith("top") else d for head, d in zip(heads, depths)]


def _depth(report: Data) -> Figure | None:
    mixture = report["mixture"]
    if not mixture:
        return None
    tasks = [k for k in mixture[0] if k != "step"]
    steps = [m["step"] for m in mixture]
    heads = list(mixture[0][tasks[0]])
    depths = np.array(_head_depths(heads), dtype=float)
    depth = np.array(
        [[np.dot([m[task][head] for head in heads], depths) for task in tasks] for m in mixture]
    )
    figure = Figure(figsize=(8, 3.5))
    axis = figure.subplots()
    if len(tasks) <= MAX_PANELS:
        for column, task in enumerate(tasks):
            axis.plot(steps, depth[:, column], label=task, linewidth=1.5)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    else:
        for q, style in ((50, "-"), (10, ":"), (90, ":")):
            axis.plot(steps, np.percentile(depth, q, axis=1), style, color="tab:blue")
    axis.set_ylim(-0.05, max(depths.max(initial=0), 1) + 0.05)
    axis.set_xlabel("observations")
    axis.set_ylabel("mean depth of the mixture")
    suffix = f"; {len(tasks)} tasks: median, 10th/90th pct" if len(tasks) > MAX_PANELS else ""
    axis.set_title(
        f"Which depth each task relies on (0: linear heads on the inputs{suffix})", fontsize=10
    )
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _task_affinity(report: Data) -> Figure | None:
    affinity = report["task_affinity"]
    if not affinity or len(affinity["tasks"]) < 2:
        return None
    tasks = affinity["tasks"]
    matrix = np.array(affinity["matrix"], dtype=float)  # null (not measured) becomes NaN
    size = min(10, 2 + 0.45 * len(tasks))
    figure = Figure(figsize=(size + 1.5, size))
    axis = figure.subplots()
    # a task not yet measured: not 0, no data
    colours = matplotlib.colormaps["Blues"].with_extremes(bad=NO_DATA)
    image = axis.imshow(np.ma.masked_invalid(matrix), cmap=colours, vmin=0, vmax=1)
    if len(tasks) <= MAX_LABELLED:
        axis.set_xticks(range(len(tasks)), tasks, rotation=90)
        axis.set_yticks(range(len(tasks)), tasks)
        if len(tasks) <= 10:
            for i in range(len(tasks)):
                for j in range(len(tasks)):
                    if math.isfinite(matrix[i, j]):
                        colour = "white" if abs(matrix[i, j]) > 0.6 else "black"
                        axis.text(
                            j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=colour
                        )
    else:
        axis.set_xlabel("task")
        axis.set_ylabel("task")
    figure.colorbar(image, ax=axis, label="overlap of the input directions each task uses")
    title = "Task affinity at the end of the run: 1, one structure serves both; 0, none shared"
    if not np.isfinite(matrix).all():
        title += "\n(grey: not measured yet)"
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
