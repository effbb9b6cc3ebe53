"""Task affinity: how alike the tasks' gradients at the shared representation are, over time."""

from __future__ import annotations

import numpy as np


class TaskAffinity:
    """A running matrix of cosine similarities between the tasks' gradients.

    After each step the learner hands over the Gram matrix of the tasks' loss
    gradients with respect to the shared representation (see `StepResult`); each
    pair of tasks that both had labels in the step updates its running cosine, an
    average over its last `1 / rate` co-labelled steps. A positive affinity means
    the tasks pull the shared trunk the same way (they help each other); a negative
    one means they conflict.

    >>> affinity = TaskAffinity()
    >>> for task in ("a", "b", "c"):
    ...     affinity.add_task()
    >>> g = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, -1.0]])  # a and b agree; c is orthogonal
    >>> affinity.update(g @ g.T)
    >>> affinity.matrix.round(2).tolist()
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """

    def __init__(self, rate: float = 0.01) -> None:
        self.rate = rate
        self._cosine = np.zeros((0, 0))
        self._count = np.zeros((0, 0))

    def add_task(self) -> None:
        n = len(self._cosine) + 1
        self._cosine = _grown(self._cosine, n)
        self._count = _grown(self._count, n)

    @property
    def matrix(self) -> np.ndarray:
        """Running cosines (NaN for a pair never labelled together); 1 on the diagonal."""
        matrix = np.where(self._count > 0, self._cosine, np.nan)
        np.fill_diagonal(matrix, 1.0)
        return matrix

    def update(self, gram: np.ndarray) -> None:
        """Take one step's per-task gradient Gram matrix."""
        norms = np.sqrt(np.maximum(np.diagonal(gram), 0.0))
        active = norms > 0
        n_active = int(active.sum())
        if n_active < 2:
            return
        if n_active == len(norms):
            self._fold(gram / np.outer(norms, norms), slice(None))
            return
        rows = np.ix_(active, active)
        self._fold(gram[rows] / np.outer(norms[active], norms[active]), rows)

    def _fold(self, cosine: np.ndarray, where: object) -> None:
        count = self._count[where] + 1.0
        self._count[where] = count
        self._cosine[where] += np.maximum(self.rate, 1.0 / count) * (cosine - self._cosine[where])

    def state(self) -> dict[str, np.ndarray]:
        return {"cosine": self._cosine.copy(), "count": self._count.copy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._cosine = np.array(arrays["cosine"], dtype=float)
        self._count = np.array(arrays["count"], dtype=float)


def _grown(matrix: np.ndarray, n: int) -> np.ndarray:
    grown = np.zeros((n, n))
    grown[: len(matrix), : len(matrix)] = matrix
    return grown
