"""Landmine detection: 29 fields, one binary task each."""

from __future__ import annotations

import typing

import numpy as np

from stream_mtl.datasets.base import OneTaskPerRow
from stream_mtl.tasks import BINARY

N_FIELDS = 29


class Landmine(OneTaskPerRow):
    """Landmine detection: 14,820 radar returns from 29 fields, 6.1% of them landmines.

    Each row has 9 radar features `x0..x8` and labels one task: its field, `field00` to
    `field28` (445 to 690 rows each; fields 0-14 are foliated, 15-28 bare earth or
    desert), True for a landmine, False for clutter. The file is grouped by field; the
    stream shuffles its rows with `seed`. There is no standard split; AUC per field is
    the usual measure.

    Stored arrays (see `arrays()`): `X` (14820, 9), `y` (14820,) int8, `task` (14820,).

    Parameters
    ----------
    seed
        Seed of the order of the rows.

    References
    ----------
    Xue, Liao, Carin & Krishnapuram (2007), "Multi-task learning for classification
    with Dirichlet process priors", JMLR 8. The online multi-task benchmark of Saha,
    Rai, Daume & Venkatasubramanian (2011) and Murugesan, Liu, Carbonell & Yang (2016).
    The file: LandmineData.mat from daizhongxiang/Federated_Bayesian_Optimization (no
    licence is stated).

    >>> from stream_mtl.datasets import Landmine
    >>> dataset = Landmine(seed=0)
    >>> dataset
    Landmine: 14,820 rows, 9 features, 29 tasks
    >>> [obs.y for obs in list(dataset)[:3]]
    [{'field24': False}, {'field10': True}, {'field24': False}]
    """

    filename = "landmine.npz"
    n_rows = 14820
    pattern = "field{:02d}"
    n_features = 9
    tasks: typing.ClassVar[dict[str, str]] = {f"field{t:02d}": BINARY for t in range(N_FIELDS)}

    def _columns(self, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return data["X"], data["y"].astype(bool)
