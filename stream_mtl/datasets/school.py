"""ILEA School: exam scores of 15,362 students in 139 schools, one regression task each."""

from __future__ import annotations

import typing

import numpy as np

from stream_mtl.datasets.base import OneTaskPerRow
from stream_mtl.tasks import REGRESSION

N_SCHOOLS = 139


class School(OneTaskPerRow):
    """ILEA School: 15,362 students of 139 schools, exam scores (1 to 70).

    Each row has 27 attributes `x0..x26` of a student and the school (categorical
    attributes one-hot encoded; the stored bias column of ones is dropped) and labels
    one task: its school, `school000` to `school138` (22 to 251 students each). The
    file is grouped by school; the stream shuffles its rows with `seed`. `arrays()`
    holds the 10 standard train/test splits of the literature (`splits_is_train`),
    on which papers report explained variance, pooled (1 - MSE / Var(y) over the test
    rows) or per school (weighted by size); pooled ridge regression reaches about 0.34
    pooled (0.19 per school).

    Stored arrays (see `arrays()`): `X` (15362, 28; the last column is the bias), `y`
    (15362,), `task` (15362,), `splits_is_train` (10, 15362) bool, and split 1 as
    `X_train`, `Y_train`, `task_train`, `X_test`, `Y_test`, `task_test`.

    Parameters
    ----------
    seed
        Seed of the order of the rows.

    References
    ----------
    Goldstein (1991), *Multilevel modelling of survey data*, The Statistician 40.
    Argyriou, Evgeniou & Pontil (2008), "Convex multi-task feature learning", Machine
    Learning 73 (the `school_b` preprocessing). Bakker & Heskes (2003), "Task
    clustering and gating for Bayesian multitask learning", JMLR 4. The file: data/school
    from tjanez/PyMTL (no licence is stated).

    >>> from stream_mtl.datasets import School
    >>> dataset = School(seed=0)
    >>> dataset
    School: 15,362 rows, 27 features, 139 tasks
    >>> first = next(iter(dataset))
    >>> first.y, first.x["x3"]
    ({'school040': 35.0}, 19.0)
    """

    filename = "school.npz"
    n_rows = 15362
    pattern = "school{:03d}"
    n_features = 27
    tasks: typing.ClassVar[dict[str, str]] = {
        f"school{t:03d}": REGRESSION for t in range(N_SCHOOLS)
    }

    def _columns(self, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return data["X"][:, :-1], data["y"].astype(float)  # the last column is a constant bias
