"""What the bundled data sets share: their files, and iteration as observations."""

from __future__ import annotations

import importlib.resources
import typing
from collections.abc import Iterator

import numpy as np

from stream_mtl.observation import Observation


def load_arrays(filename: str) -> dict[str, np.ndarray]:
    """The arrays of a bundled NumPy archive (read without pickle)."""
    resource = importlib.resources.files("stream_mtl.datasets") / "data" / filename
    with importlib.resources.as_file(resource) as path, np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class Dataset:
    """Base class of the bundled data sets (abstract): an iterable of `Observation`s.

    A subclass sets `tasks` (task name -> kind), `n_rows`, `n_features` and `filename`,
    and builds its observations in `_observations`. Iterating gives the same observations, in the
    same order, every time.
    """

    filename: typing.ClassVar[str] = ""
    tasks: typing.ClassVar[dict[str, str]]
    n_features: typing.ClassVar[int]
    n_rows: typing.ClassVar[int]

    def arrays(self) -> dict[str, np.ndarray]:
        """The data set's arrays as stored (see the class's docstring for their shapes)."""
        return load_arrays(self.filename)

    def _observations(self) -> list[Observation]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Observation]:
        return iter(self._observations())

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}: {self.n_rows:,} rows, {self.n_features} features, "
            f"{len(self.tasks)} tasks"
        )


class OneTaskPerRow(Dataset):
    """Base class of the data sets whose rows each label one task (abstract).

    The files are grouped by task; a stream is not, so the rows come in an order
    shuffled with `seed`. A subclass sets `pattern` (the task name, formatted with the
    row's task id) and picks its columns in `_columns`.
    """

    pattern: typing.ClassVar[str]

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _columns(self, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The features (rows x features) and labels of the stored arrays."""
        raise NotImplementedError

    def _observations(self) -> list[Observation]:
        data = self.arrays()
        X, y = self._columns(data)
        names = [f"x{j}" for j in range(X.shape[1])]
        order = np.random.default_rng(self.seed).permutation(len(X))
        labels, tasks = y.tolist(), data["task"]
        return [
            Observation(
                dict(zip(names, X[i].tolist())), {self.pattern.format(int(tasks[i])): labels[i]}
            )
            for i in order.tolist()
        ]
