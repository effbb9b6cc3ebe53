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

    def update_many(self, labels: np.ndarray, guesses: np.ndarray) -> None:
        """Score a batch of predictions at once; missing ones (None, NaN) are skipped."""
        if self.regression:
            try:
                errors = np.abs(np.asarray(labels, float) - np.asarray(guesses, float))
            except (TypeError, ValueError):  # a column of objects: score one by one
                pass
            else:
                self._errors.extend(errors[~np.isnan(errors)].tolist())
                return
        for label, guess in zip(labels.tolist(), guesses.tolist()):
            self.update(label, guess)

    def get(self) -> float:
        return sum(self._errors) / len(self._errors) if self._errors else math.nan
