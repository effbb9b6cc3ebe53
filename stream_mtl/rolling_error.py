"""RollingError: one task's error over its last labels, cheap enough for every message.

A live consumer or service logs and exports it; prequential evaluation keeps River's
full metrics instead.
"""

from __future__ import annotations

import collections
import math
import typing

import numpy as np

from stream_mtl.tasks import REGRESSION


class RollingError:
    """A task's error over its last `window` scored labels: the mean absolute error for
    regression, the error rate for classification. Cheap enough for every message.

    >>> error = RollingError("regression", window=2)
    >>> for label, guess in [(1.0, 5.0), (1.0, 2.0), (1.0, 1.5)]:
    ...     error.update(label, guess)
    >>> error.name, error.get()
    ('MAE', 0.75)
    """

    def __init__(self, kind: str, window: int) -> None:
        self.regression = kind == REGRESSION
        self.name = "MAE" if self.regression else "error rate"
        self._errors: collections.deque = collections.deque(maxlen=window)

    def update(self, label: typing.Any, guess: typing.Any) -> None:
        """Score one prediction; a missing label or prediction (None, NaN) is skipped."""
        if label is None or guess is None or label != label or guess != guess:
            return
        self._errors.append(abs(label - guess) if self.regression else float(label != guess))

    def update_many(self, labels: typing.Sequence, guesses: typing.Sequence) -> None:
        """Score a batch of predictions at once; missing ones (None, NaN) are skipped."""
        labels, guesses = list(labels), list(guesses)
        if self.regression:
            try:
                errors = np.abs(_floats(labels) - _floats(guesses))
            except (TypeError, ValueError):  # a column of objects: score one by one
                pass
            else:
                self._errors.extend(errors[~np.isnan(errors)].tolist())
                return
        for label, guess in zip(labels, guesses):
            self.update(label, guess)

    def get(self) -> float:
        return sum(self._errors) / len(self._errors) if self._errors else math.nan


SMALL_BATCH = 8  # rows below which update_many scores row by row


class RollingErrors:
    """Every task's `RollingError`, each made at its task's first scored label: what the
    stream step scores served predictions with unless told otherwise.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> errors = RollingErrors(MultiTaskLearner(tasks={"price": Regression()}), window=100)
    >>> errors.update({"price": 10.0}, {"price": 12.5})
    >>> errors.get()
    {'price': 2.5}
    """

    def __init__(self, model: typing.Any, window: int) -> None:
        self.model = model
        self.window = window
        self.errors: dict[str, RollingError] = {}

    def __getitem__(self, task: str) -> RollingError:
        if task not in self.errors:
            self.errors[task] = RollingError(self.model.tasks[task].kind, self.window)
        return self.errors[task]

    def update(self, y: dict, served: dict | None) -> None:
        """Score the prediction `served` (None: nothing was served, nothing to score)."""
        if served is not None:
            for name, label in y.items():
                self[name].update(label, served.get(name))

    def update_many(self, rows: typing.Sequence) -> None:
        """`update` for rows with `y` and `served` (a stream step's), task by task at once
        (row by row for a handful: arrays cost more than they save there)."""
        scored = [row for row in rows if row.served is not None]
        if len(scored) < SMALL_BATCH:
            for row in scored:
                self.update(row.y, row.served)
            return
        for name in dict.fromkeys(name for row in scored for name in row.y):
            labels = [row.y.get(name) for row in scored]
            guesses = [row.served.get(name) for row in scored]
            self[name].update_many(labels, guesses)

    def get(self) -> dict[str, float]:
        return {name: error.get() for name, error in self.errors.items()}


def _floats(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)
