"""River's regression errors of one task, folded in with NumPy a block of labels at a time.

A prequential run scores every label it learns. River's `MAE`, `MSE`, `RMSE` and `R2`
updated one label at a time cost about half a microsecond each, which, over the three
of them on each of several tasks, adds up to a tenth of what the model itself costs per
observation. `RegressionErrors` keeps the labels and predictions instead, folds them into
running sums a block at a time, and gives the values River's metrics would give (to
rounding: sums taken by NumPy, and the labels' variance merged block by block).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from river import metrics

__all__ = ["FOLDED", "RegressionErrors"]

FOLDED = (metrics.MAE, metrics.MSE, metrics.RMSE, metrics.R2)
BLOCK = 4096  # labels held before they are folded in: what the pending list can hold


class RegressionErrors:
    """Running MAE, MSE, RMSE and R2 of numeric labels and predictions.

    >>> from river import metrics
    >>> errors = RegressionErrors()
    >>> river = [metrics.MAE(), metrics.RMSE(), metrics.R2()]
    >>> for label, prediction in [(3.0, 2.5), (-0.5, 0.0), (2.0, 2.0), (7.0, 8.0)]:
    ...     errors.add(label, prediction)
    ...     for metric in river:
    ...         metric.update(label, prediction)
    >>> [round(errors.value(type(m)), 4) for m in river]
    [0.5, 0.6124, 0.9486]
    >>> [round(m.get(), 4) for m in river]
    [0.5, 0.6124, 0.9486]
    """

    def __init__(self, pairs: Iterable[tuple[float, float]] = ()) -> None:
        # count, sum of |label - prediction|, sum of (label - prediction)^2, the labels'
        # mean and their spread (sum of squared deviations from the mean)
        self._sums = (0, 0.0, 0.0, 0.0, 0.0)
        pairs = list(pairs)
        # pending: not folded in yet (those given here, however many, in one block)
        self._labels: list[float] = [label for label, _ in pairs]
        self._predictions: list[float] = [prediction for _, prediction in pairs]
        self._read: tuple | None = None  # the sums with the pending pairs, once read

    def add(self, label: float, prediction: float) -> None:
        self._labels.append(label)
        self._predictions.append(prediction)
        self._read = None
        if len(self._labels) >= BLOCK:
            self._sums = self._with_pending()
            self._labels.clear()
            self._predictions.clear()

    def _with_pending(self) -> tuple:
        """The sums with the pending pairs added; the labels' spread is merged as Chan,
        Golub and LeVeque's pairwise update does."""
        if not self._labels:
            return self._sums
        labels = np.array(self._labels, dtype=float)
        errors = labels - np.array(self._predictions, dtype=float)
        count, absolute, squared, mean, spread = self._sums
        n = len(labels)
        # Labels that do not vary have no spread at all, as in River (not a rounding's).
        block_mean = float(labels[0]) if labels.min() == labels.max() else float(labels.mean())
        total = count + n
        delta = block_mean - mean
        return (
            total,
            absolute + float(np.sum(np.abs(errors))),
            squared + float(np.dot(errors, errors)),
            mean + delta * n / total,
            spread + float(np.sum((labels - block_mean) ** 2)) + delta * delta * count * n / total,
        )

    def value(self, kind: type) -> float:
        """The value of River's metric `kind` (one of `FOLDED`) over the pairs added: 0
        before any (and R2 below two labels, or where the labels do not vary), as River's.
        Reading folds nothing in: the value depends on the pairs alone, not on when it
        was read."""
        if kind not in FOLDED:
            raise TypeError(f"{kind.__name__} is not one of {[k.__name__ for k in FOLDED]}")
        if self._read is None:
            self._read = self._with_pending()
        n, absolute, squared, _mean, spread = self._read
        if not n:
            return 0.0
        if kind is metrics.MAE:
            return absolute / n
        if kind is metrics.MSE:
            return squared / n
        if kind is metrics.RMSE:
            return math.sqrt(squared / n)
        if n < 2 or spread == 0.0:
            return 0.0
        return 1.0 - squared / spread
