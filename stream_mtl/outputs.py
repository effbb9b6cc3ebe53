"""The output side of a learner: labels to training targets, head outputs to predictions.

`Outputs` knows the tasks in order and what each has learned about its labels: the
running scale of each regression target, the classes each multiclass task has seen, and
each binary task's decision threshold (tuned online where its `Binary` asks for it). It
checks labels, turns them into the targets the backend trains on (one column per task),
and turns the backend's head outputs back into predictions and probabilities. The input
side is `features.FeatureEncoder`; the parameters are the backend's.
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from stream_mtl.decision import OnlineThreshold, PooledPrior
from stream_mtl.exceptions import InvalidInput, InvalidInputType
from stream_mtl.moments import RunningMoments
from stream_mtl.tasks import (
    BINARY,
    MULTICLASS,
    REGRESSION,
    Label,
    Multiclass,
    Task,
    unknown_task,
)

Prediction = dict[str, Label | None]
Probabilities = dict[str, dict[Label, float]]


class Outputs:
    """Labels to targets and head outputs to predictions, for tasks in a fixed order.

    `on_new_class(task, n_classes)` is called when a multiclass task meets a new class
    (the learner grows that task's head).

    >>> from stream_mtl import Binary, Regression
    >>> outputs = Outputs()
    >>> outputs.add_task("price", Regression()); outputs.add_task("churn", Binary(0.5))
    >>> outputs.targets_one(outputs.check_labels({"price": 10.0, "churn": True}))
    [0.0, 1.0]
    >>> outputs.decode_one([0.0, 0.7])   # the scaled output 0 is the running mean, 10
    {'price': 10.0, 'churn': True}
    """

    def __init__(
        self,
        on_new_class: Callable[[str, int], None] | None = None,
        max_magnitude: float = math.inf,
    ) -> None:
        self.on_new_class = on_new_class
        self.max_magnitude = max_magnitude  # of a regression label
        self.names: list[str] = []
        self.tasks: list[Task] = []
        self.positions: dict[str, int] = {}
        self.scale = RunningMoments()  # one column per task; used by regression tasks
        self.classes: dict[str, list[Label]] = {}
        self._class_index: dict[str, dict[Label, int]] = {}
        self.tuners: dict[int, OnlineThreshold] = {}  # binary task position -> tuner
        self.pooled = PooledPrior(self.tuners)

    def add_task(self, name: str, task: Task) -> None:
        self.positions[name] = len(self.names)
        self.names.append(name)
        self.tasks.append(task)
        self.scale.grow(len(self.names))
        if task.kind == MULTICLASS:
            self.classes[name] = []
            self._class_index[name] = {}
        if task.kind == BINARY and isinstance(task.threshold, str):
            self.tuners[len(self.names) - 1] = OnlineThreshold(task.threshold)

    def frozen_copy(self) -> Outputs:
        """A deep copy that no longer calls back and never changes (a snapshot's: it never
        learns a class, its thresholds are worked out, and what only learning reads, the
        thresholds' pooled prior, is left out)."""
        callback, self.on_new_class = self.on_new_class, None
        try:
            frozen = copy.deepcopy(self, {id(self.pooled): None})
        finally:
            self.on_new_class = callback
        for tuner in frozen.tuners.values():
            tuner.settle()
        return frozen

    def n_outputs(self, position: int) -> int:
        """How many head outputs the task at `position` has now."""
        task = self.tasks[position]
        return len(self.classes[self.names[position]]) if task.kind == MULTICLASS else 1

    # -- labels ------------------------------------------------------------------------

    def position(self, name: object) -> int:
        try:
            return self.positions[name]  # type: ignore[index]
        except (KeyError, TypeError):
            raise unknown_task(name, self.names) from None

    def check_labels(self, y: object) -> list[Label | None]:
        """Canonical labels by task position (None where absent); raises naming the fault."""
        labels: list[Label | None] = [None] * len(self.names)
        for name, label in self.canonical_labels(y).items():
            labels[self.positions[name]] = label
        return labels

    def canonical_labels(self, y: object) -> dict[str, Label]:
        """The labels of `y` in canonical form, missing ones left out; raises naming the
        fault (an unknown task, a label of the wrong kind, one beyond `max_magnitude`)."""
        if type(y) is not dict and not isinstance(y, Mapping):
            raise InvalidInputType(
                f"labels must be a dict of task -> label, got {type(y).__name__}"
            )
        labels: dict[str, Label] = {}
        positions, tasks, bound = self.positions, self.tasks, self.max_magnitude
        for name, label in y.items():
            try:
                task = tasks[positions[name]]
            except (KeyError, TypeError):
                raise unknown_task(name, self.names) from None
            label = task.check_label(name, label)
            if label is not None:
                if type(label) is float and abs(label) > bound:
                    self._refuse_magnitude(name, label)
                elif task.kind == MULTICLASS and label not in self._class_index[name]:
                    self._check_room(name, task, 1)
                labels[name] = label
        return labels

    def _check_room(self, name: str, task: Task, n_new: int, where: str = "") -> None:
        """Refuse `n_new` new classes for a multiclass task beyond its `max_classes`."""
        n_classes, limit = len(self.classes[name]), typing.cast(Multiclass, task).max_classes
        if n_classes + n_new > limit:
            raise InvalidInput(
                f"a label for multiclass task {name!r}{where} would be class number "
                f"{n_classes + n_new}, beyond its max_classes={limit}",
                reason=f"more classes than max_classes for multiclass task {name!r}",
            )

    def _refuse_magnitude(self, task: str, label: float, where: str = "") -> typing.NoReturn:
        raise InvalidInput(
            f"label {label:.3g} for regression task {task!r}{where} is beyond max_magnitude="
            f"{self.max_magnitude:g}; rescale it, or raise the model's max_magnitude",
            reason=f"label beyond max_magnitude for regression task {task!r}",
        )

    def check_label_frame(self, Y: object, n_rows: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per task position: its labels in canonical form and which rows have one."""
        if isinstance(Y, pd.DataFrame):
            columns = {name: Y[name].to_numpy() for name in Y.columns}
        elif isinstance(Y, Mapping):
            columns = {name: np.asarray(values) for name, values in Y.items()}
        else:
            raise InvalidInputType(
                f"labels must be a DataFrame with one column per task, got {type(Y).__name__}"
            )
        checked = {}
        for name, values in columns.items():
            position = self.position(name)
            if len(values) != n_rows:
                raise InvalidInput(
                    f"labels for task {name!r} have {len(values)} rows; the features have {n_rows}"
                )
            column, present = checked[position] = self.tasks[position].check_label_column(
                name, values
            )
            task = self.tasks[position]
            if task.kind == REGRESSION:
                beyond = present & (np.abs(np.where(present, column, 0.0)) > self.max_magnitude)
                if beyond.any():
                    row = int(np.flatnonzero(beyond)[0])
                    self._refuse_magnitude(name, float(column[row]), f" (row {row})")
            elif task.kind == MULTICLASS:
                known = self._class_index[name]
                new = {label for label in column[present] if label not in known}
                if new:
                    self._check_room(name, task, len(new), " in this batch")
        return checked

    # -- labels to targets -------------------------------------------------------------

    def targets_one(self, labels: list[Label | None]) -> list:
        """One observation's training targets by task position (None where unlabelled),
        updating the target scales and the classes seen."""
        targets: list = [None] * len(labels)
        for position, label in enumerate(labels):
            if label is None:
                continue
            kind = self.tasks[position].kind
            if kind == REGRESSION:
                targets[position] = self.scale.update_and_scale_scalar(position, label)
            elif kind == BINARY:
                targets[position] = 1.0 if label else 0.0
            else:
                targets[position] = self._class_position(self.names[position], label)
        return targets

    def targets_many(
        self, labels: dict[int, tuple[np.ndarray, np.ndarray]], n_rows: int
    ) -> np.ndarray:
        """A batch's training targets (rows x tasks, NaN where unlabelled), updating the
        target scales row by row as `targets_one` would."""
        targets = np.full((n_rows, len(self.names)), np.nan)
        for position, (column, present) in labels.items():
            kind = self.tasks[position].kind
            if kind == REGRESSION:
                scaled = self.scale.update_and_scale_batch(
                    np.array([position]), np.where(present, column, 0.0)[:, None], present[:, None]
                )[:, 0]
                targets[present, position] = scaled[present]
            elif kind == BINARY:
                targets[present, position] = column[present]
            else:
                name = self.names[position]
                targets[present, position] = [
                    self._class_position(name, label) for label in column[present]
                ]
        return targets

    def has_class(self, task: str, label: Label) -> bool:
        """Whether multiclass `task` knows the class `label`."""
        return label in self._class_index[task]

    def add_class(self, task: str, label: Label) -> None:
        """Give multiclass `task` the class `label` (if new), unless it has `max_classes`."""
        known = self.classes[task]
        if (
            label not in self._class_index[task]
            and len(known) < self.tasks[self.positions[task]].max_classes
        ):
            self._class_position(task, label)

    def _class_position(self, task: str, label: Label) -> int:
        index = self._class_index[task]
        position = index.get(label)
        if position is None:
            position = index[label] = len(self.classes[task])
            self.classes[task].append(label)
            if self.on_new_class is not None:
                self.on_new_class(task, len(self.classes[task]))
        return position

    def tune_thresholds(
        self, targets: np.ndarray, probabilities: np.ndarray, columns: list[int]
    ) -> None:
        """Feed each tuned binary threshold the probabilities served before this step
        (`columns[position]`: the task's column in `probabilities`)."""
        pooled = []
        for position, tuner in self.tuners.items():
            rows = ~np.isnan(targets[:, position])
            if rows.any():
                served = probabilities[rows, columns[position]]
                labels = targets[rows, position] == 1.0
                tuner.update(served, labels)
                if tuner.rule == "f1":
                    pooled.append((served, labels))
        if pooled:
            self.pooled.update(*map(np.concatenate, zip(*pooled)))

    # -- head outputs to predictions ---------------------------------------------------

    def threshold(self, position: int) -> float:
        tuner = self.tuners.get(position)
        return tuner.threshold if tuner is not None else self.tasks[position].threshold

    def decode_one(self, outputs: list[float]) -> Prediction:
        """One row of head outputs as each task's prediction: a number, a bool (P(True)
        above the task's threshold) or a class (None before any class)."""
        prediction: Prediction = {}
        mean, std = self.scale.mean, self.scale.stdev
        start = 0
        for position, (name, task) in enumerate(zip(self.names, self.tasks)):
            kind = task.kind
            if kind == REGRESSION:
                prediction[name] = outputs[start] * float(std[position]) + float(mean[position])
                start += 1
            elif kind == BINARY:
                prediction[name] = outputs[start] > self.threshold(position)
                start += 1
            else:
                classes = self.classes[name]
                logits = outputs[start : start + len(classes)]
                prediction[name] = classes[logits.index(max(logits))] if classes else None
                start += len(classes)
        return prediction

    def decode(self, outputs: np.ndarray) -> list[Prediction]:
        """`decode_one` for each row of `outputs`, column by column."""
        columns: dict[str, list] = {}
        start = 0
        for position, (name, task) in enumerate(zip(self.names, self.tasks)):
            if task.kind == REGRESSION:
                std = self.scale.stdev[position]
                values = outputs[:, start] * std + self.scale.mean[position]
                columns[name] = values.astype(float).tolist()
                start += 1
            elif task.kind == BINARY:
                columns[name] = (outputs[:, start] > self.threshold(position)).tolist()
                start += 1
            else:
                classes = self.classes[name]
                if classes:
                    best = outputs[:, start : start + len(classes)].argmax(axis=1)
                    columns[name] = [classes[i] for i in best]
                else:
                    columns[name] = [None] * len(outputs)
                start += len(classes)
        return (
            [dict(zip(columns, row)) for row in zip(*columns.values())]
            if columns
            else [{} for _ in range(len(outputs))]
        )

    def probabilities(self, outputs: np.ndarray) -> list[Probabilities]:
        """Class probabilities of each classification task, for each row of `outputs`."""
        rows: list[Probabilities] = [{} for _ in range(len(outputs))]
        start = 0
        for name, task in zip(self.names, self.tasks):
            if task.kind == REGRESSION:
                start += 1
            elif task.kind == BINARY:
                for row, p in zip(rows, outputs[:, start].astype(float).tolist()):
                    row[name] = {False: 1.0 - p, True: p}
                start += 1
            else:
                classes = self.classes[name]
                probabilities = outputs[:, start : start + len(classes)].astype(float)
                start += len(classes)
                for row, p in zip(rows, probabilities.tolist()):
                    row[name] = dict(zip(classes, p))
        return rows

    # -- checkpoints -------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able metadata (the classes) and arrays (target scales, thresholds)."""
        arrays = {f"targets.{k}": v for k, v in self.scale.state().items()}
        arrays.update({f"threshold.{self.names[k]}": t.state() for k, t in self.tuners.items()})
        arrays["thresholds_pooled"] = self.pooled.state()
        return {"classes": self.classes}, arrays

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Go on from `state()`; the tasks are added already."""
        start = len("targets.")
        self.scale.load_state({k[start:]: v for k, v in arrays.items() if k.startswith("targets.")})
        for name, classes in meta["classes"].items():
            self.classes[name] = list(classes)
            self._class_index[name] = {label: i for i, label in enumerate(classes)}
            if self.on_new_class is not None:
                self.on_new_class(name, len(classes))
        for position, tuner in self.tuners.items():
            tuner.load_state(arrays[f"threshold.{self.names[position]}"])
        self.pooled.load_state(arrays["thresholds_pooled"])
