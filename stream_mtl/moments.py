"""Running mean and variance of many columns at once (Welford), grown as columns appear.

Used for the online scaling of features and of regression targets. The batch
update gives each row the statistics a row-by-row loop would have given it, so
`learn_many` scales exactly as a loop of `learn_one` would.
"""

from __future__ import annotations

import math

import numpy as np

from stream_mtl.backends.kernels import kernel_array, welford_rows, welford_step

_EVERY = slice(None)


class RunningMoments:
    """Count, mean and sum of squared deviations per column, in float64.

    >>> m = RunningMoments()
    >>> m.grow(2)
    >>> for row in ([1.0, 10.0], [3.0, 30.0]):
    ...     _ = m.update_and_scale(np.arange(2), np.array(row))
    >>> m.mean.tolist(), m.std(np.arange(2)).tolist()
    ([2.0, 20.0], [1.0, 10.0])
    """

    def __init__(self) -> None:
        self.count = np.zeros(0)
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)
        self.stdev = np.ones(0)  # kept up to date: 1 where the deviation is not yet defined

    def __len__(self) -> int:
        return len(self.count)

    def grow(self, n_columns: int) -> None:
        """Make room for `n_columns` columns in all; new ones start empty."""
        extra = n_columns - len(self.count)
        if extra > 0:
            pad = np.zeros(extra)
            self.count = np.concatenate([self.count, pad])
            self.mean = np.concatenate([self.mean, pad])
            self.m2 = np.concatenate([self.m2, pad])
            self.stdev = np.concatenate([self.stdev, pad + 1.0])

    def std(self, columns: np.ndarray | slice) -> np.ndarray:
        """Standard deviation of the given columns; 1 where it is not yet defined."""
        return self.stdev[columns]

    def scale(self, columns: np.ndarray | slice, values: np.ndarray) -> np.ndarray:
        """Standardise `values` (one per column, or rows of them) with the current statistics."""
        return (values - self.mean[columns]) / self.stdev[columns]

    def update_and_scale(self, columns: np.ndarray | slice, values: np.ndarray) -> np.ndarray:
        """Add one observation of each given column, then return it standardised."""
        if type(columns) is slice and columns == _EVERY and len(values) == len(self.count):
            # a stream's steady all-numeric schema: one compiled call
            return welford_step(self.count, self.mean, self.m2, self.stdev, kernel_array(values))
        return self._update_and_scale(columns, values)

    def _update_and_scale(self, columns: np.ndarray | slice, values: np.ndarray) -> np.ndarray:
        """`update_and_scale` in NumPy: the reference of `kernels.welford_step`."""
        # A slice gives views, updated in place; an index array gives copies, written back.
        count, mean, m2, stdev = (
            self.count[columns], self.mean[columns], self.m2[columns], self.stdev[columns]
        )  # fmt: skip
        count += 1.0
        delta = values - mean
        mean += delta / count
        deviation = values - mean
        m2 += delta * deviation
        np.divide(m2, count, out=stdev)
        np.sqrt(stdev, out=stdev)
        stdev[stdev == 0.0] = 1.0
        if not isinstance(columns, slice):
            self.count[columns], self.mean[columns], self.m2[columns], self.stdev[columns] = (
                count, mean, m2, stdev
            )  # fmt: skip
        deviation /= stdev
        return deviation

    def update_and_scale_scalar(self, column: int, value: float) -> float:
        """`update_and_scale` for a single column, in Python floats (cheaper for one value)."""
        count = float(self.count[column]) + 1.0
        mean = float(self.mean[column])
        delta = value - mean
        mean += delta / count
        m2 = float(self.m2[column]) + delta * (value - mean)
        std = math.sqrt(m2 / count) or 1.0
        self.count[column], self.mean[column], self.m2[column], self.stdev[column] = (
            count,
            mean,
            m2,
            std,
        )
        return (value - mean) / std

    def update_and_scale_batch(
        self, columns: np.ndarray, values: np.ndarray, present: np.ndarray | None = None
    ) -> np.ndarray:
        """Add the rows of `values` (n_rows x len(columns)) in order; return them standardised.

        Row i is standardised with the statistics of every earlier row and itself: the
        same operations in the same order as a loop of `update_and_scale`, so the same
        numbers (one compiled call, `kernels.welford_rows`). Entries where `present` is
        False are skipped (they neither count nor get a meaningful scaled value; 0 is
        returned there).
        """
        values = kernel_array(values)
        present = (
            np.ones(values.shape, dtype=bool) if present is None else kernel_array(present, bool)
        )
        count, mean, m2, stdev = (
            self.count[columns], self.mean[columns], self.m2[columns], self.stdev[columns]
        )  # fmt: skip
        scaled = welford_rows(count, mean, m2, stdev, values, present)
        self.count[columns], self.mean[columns], self.m2[columns], self.stdev[columns] = (
            count, mean, m2, stdev
        )  # fmt: skip
        return scaled

    def _refresh_stdev(self) -> None:
        var = np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0)
        self.stdev = np.sqrt(var)
        self.stdev[self.stdev == 0.0] = 1.0

    def state(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.count = np.array(arrays["count"], dtype=float)
        self.mean = np.array(arrays["mean"], dtype=float)
        self.m2 = np.array(arrays["m2"], dtype=float)
        self._refresh_stdev()
