"""Task affinity: how much the tasks depend on the same directions of the input, over time."""

from __future__ import annotations

import numpy as np


class TaskAffinity:
    """A running measure of the structure two tasks share: the overlap of the input
    directions their predictions are sensitive to.

    Every so often the learner hands over the Jacobian of its predictions with respect
    to the (scaled) inputs at one observation: a row per head output, a column per
    input. Each task keeps a running average of the outer products of its rows, M_k =
    E[J_k J_k^T], whose leading eigenvectors span the input directions the task's
    prediction moves with (its "active subspace", Constantine, Dow & Wang, SIAM J. Sci.
    Comput. 2014). The affinity of tasks i and j is the cosine of M_i and M_j as
    matrices, <M_i, M_j> / (|M_i| |M_j|), in [0, 1]: 1 when both depend on the same
    directions in the same proportions (tasks built on one latent structure, which a
    shared trunk serves), 0 when they depend on disjoint ones.

    Unlike the cosine of the tasks' loss gradients, which averages to about 0 for any
    two tasks once both are learned (each step's gradient is then its residual's noise
    times a fixed direction), it measures the model's structure, not its errors, and
    needs no step in which both tasks are labelled.

    The learner measures one labelled observation in `every` (`due` says which), at most
    `max_rows` of a mini-batch: a running average loses little by sampling, and the
    per-observation path stays fast.

    Parameters
    ----------
    rate
        Weight of each new Jacobian in the running averages (after the first 1 / rate,
        which are averaged evenly).
    max_inputs
        Inputs taken into account: the first `max_inputs` (in order of first
        appearance). Memory is n_tasks x max_inputs^2 floats.
    every
        One labelled observation in this many is measured.
    max_rows
        At most this many rows of one mini-batch are measured.

    >>> affinity = TaskAffinity()
    >>> for task in ("a", "b", "c"):
    ...     affinity.add_task()
    >>> jacobian = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    >>> affinity.update(jacobian, column_task=np.array([0, 1, 2]))
    >>> affinity.matrix.round(2).tolist()  # a and b move with inputs 0 and 1, c with 2
    [[1.0, 0.64, 0.0], [0.64, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """

    def __init__(
        self, rate: float = 0.01, max_inputs: int = 128, every: int = 16, max_rows: int = 2
    ) -> None:
        self.rate = rate
        self.max_inputs = max_inputs
        self.every = every
        self.max_rows = max_rows
        self._moments = np.zeros((0, 0, 0))  # task x input x input
        self._count = 0  # Jacobians taken
        self._rows = 0  # labelled observations learned

    def due(self, n_rows: int) -> np.ndarray:
        """Which of the next `n_rows` labelled observations to measure (their indices)."""
        first = self.every - 1 - self._rows % self.every
        self._rows += n_rows
        picked = np.arange(first, n_rows, self.every)
        if len(picked) > self.max_rows:
            picked = picked[np.linspace(0, len(picked) - 1, self.max_rows).astype(int)]
        return picked

    def due_one(self) -> bool:
        """`due(1)` for one observation, without making an array (the per-row path)."""
        self._rows += 1
        return self._rows % self.every == 0 and self.max_rows > 0

    def add_task(self) -> None:
        n_tasks, n, _ = self._moments.shape
        grown = np.zeros((n_tasks + 1, n, n))
        grown[:n_tasks] = self._moments
        self._moments = grown

    def _grow_inputs(self, n_inputs: int) -> None:
        n = min(n_inputs, self.max_inputs)
        n_tasks, old, _ = self._moments.shape
        if n > old:
            grown = np.zeros((n_tasks, n, n))
            grown[:, :old, :old] = self._moments
            self._moments = grown

    @property
    def matrix(self) -> np.ndarray:
        """Task x task affinities in [0, 1]; NaN for a task whose predictions have not yet
        moved with any input; 1 on the diagonal."""
        flat = self._moments.reshape(len(self._moments), -1)
        norms = np.linalg.norm(flat, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = (flat @ flat.T) / np.outer(norms, norms)
        matrix[norms == 0, :] = np.nan
        matrix[:, norms == 0] = np.nan
        np.fill_diagonal(matrix, 1.0)
        return matrix

    def update(self, jacobian: np.ndarray, column_task: np.ndarray) -> None:
        """Take one observation's Jacobian (outputs x inputs); `column_task[o]` is the
        task of output o. Its inputs beyond `max_inputs` are left out."""
        self._grow_inputs(jacobian.shape[1])
        rows = np.asarray(jacobian, float)[:, : self._moments.shape[1]]
        outer = rows[:, :, None] * rows[:, None, :]
        if len(rows) != len(self._moments) or (column_task != np.arange(len(rows))).any():
            summed = np.zeros_like(self._moments)  # tasks with several outputs: their sum
            np.add.at(summed, column_task, outer)
            outer = summed
        self._count += 1
        self._moments += max(self.rate, 1.0 / self._count) * (outer - self._moments)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "moments": self._moments.copy(),
            "count": np.array(self._count),
            "rows": np.array(self._rows),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._moments = np.array(arrays["moments"], dtype=float)
        self._count = int(arrays["count"])
        self._rows = int(arrays["rows"])
