"""The real multi-task data sets of the project's shared folder, as observation streams.

`../shared/data` (see its README) holds SARCOS (the official test file: 7 joint torques
from 21 inputs), Landmine (29 fields, binary) and School (139 schools, exam scores) as
NumPy archives. Each loader returns the tasks (name -> kind) and a list of
`Observation`s: SARCOS labels all 7 tasks per row, in file order (weakly ordered in
time); Landmine and School label one task per row (the row's field or school), in an
order shuffled with `seed`, since the files are grouped by task.

Where the folder is missing (a user's machine), `find_data_folder` returns None and
callers say what they skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stream_mtl.observation import Observation
from stream_mtl.tasks import BINARY, REGRESSION

DATA_SETS = ("sarcos", "landmine", "school")
_FILES = {
    "sarcos": "sarcos_inv_test.npz",
    "landmine": "landmine.npz",
    "school": "school.npz",
}


def find_data_folder(given: str | os.PathLike | None = None) -> Path | None:
    """The shared data folder: `given` (which must hold the data sets), else
    $STREAM_MTL_DATA, else ../shared/data from the working directory or from this
    repository; None where there is none."""
    if given is not None:
        missing = [f for f in _FILES.values() if not (Path(given) / f).is_file()]
        if missing:
            raise FileNotFoundError(f"data folder {str(given)!r} lacks {missing}")
        return Path(given).resolve()
    here = Path(__file__).resolve().parent.parent
    for candidate in (os.environ.get("STREAM_MTL_DATA"), "../shared/data", here / "../shared/data"):
        if candidate and all((Path(candidate) / f).is_file() for f in _FILES.values()):
            return Path(candidate).resolve()
    return None


def _load(folder: Path, name: str) -> dict[str, np.ndarray]:
    path = Path(folder) / _FILES[name]
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def sarcos(folder: Path) -> tuple[dict[str, str], list[Observation]]:
    """SARCOS inverse dynamics: 21 inputs (7 positions, velocities, accelerations), 7 torques."""
    data = _load(folder, "sarcos")
    names = [f"{part}{j}" for part in ("q", "dq", "ddq") for j in range(1, 8)]
    tasks = {f"torque{j}": REGRESSION for j in range(1, 8)}
    observations = [
        Observation(dict(zip(names, x)), dict(zip(tasks, y)))
        for x, y in zip(data["X_test"].tolist(), data["Y_test"].tolist())
    ]
    return tasks, observations


def landmine(folder: Path, seed: int = 0) -> tuple[dict[str, str], list[Observation]]:
    """Landmine detection: 9 radar features; one binary task per field (29)."""
    data = _load(folder, "landmine")
    tasks = {f"field{t:02d}": BINARY for t in range(int(data["task"].max()) + 1)}
    return tasks, _one_task_per_row(
        data["X"], data["y"].astype(bool), data["task"], "field{:02d}", seed
    )


def school(folder: Path, seed: int = 0) -> tuple[dict[str, str], list[Observation]]:
    """ILEA School: 27 attributes (the bias column dropped); one regression task per school."""
    data = _load(folder, "school")
    tasks = {f"school{t:03d}": REGRESSION for t in range(int(data["task"].max()) + 1)}
    X = data["X"][:, :-1]  # the last column is a constant bias
    return tasks, _one_task_per_row(X, data["y"].astype(float), data["task"], "school{:03d}", seed)


def _one_task_per_row(
    X: np.ndarray, y: np.ndarray, task: np.ndarray, pattern: str, seed: int
) -> list[Observation]:
    names = [f"x{j}" for j in range(X.shape[1])]
    order = np.random.default_rng(seed).permutation(len(X))
    labels = y.tolist()
    return [
        Observation(dict(zip(names, X[i].tolist())), {pattern.format(int(task[i])): labels[i]})
        for i in order.tolist()
    ]
