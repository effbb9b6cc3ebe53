"""SARCOS robot-arm inverse dynamics: 7 joint torques from 21 inputs."""

from __future__ import annotations

import typing

from stream_mtl.datasets.base import Dataset
from stream_mtl.observation import Observation
from stream_mtl.tasks import REGRESSION

INPUTS = [f"{part}{j}" for part in ("q", "dq", "ddq") for j in range(1, 8)]


class SARCOS(Dataset):
    """SARCOS inverse dynamics, the official test file: 4,449 rows, 7 regression tasks.

    The inputs are the 7 joint positions `q1..q7`, velocities `dq1..dq7` and
    accelerations `ddq1..ddq7` of a SARCOS anthropomorphic robot arm; the tasks are the
    7 joint torques `torque1..torque7`, all labelled on every row. Rows come in file
    order, which is weakly ordered in time. Only the 4,449-row test file is bundled (the
    44,484-row training file is not), so it serves as a short real stream for
    prequential evaluation, scored by the normalised MSE of each joint,
    MSE_j / Var(y_j); published SARCOS figures train on the full training file and are
    not comparable to such a run.

    Stored arrays (see `arrays()`): `X_test` (4449, 21), `Y_test` (4449, 7).

    References
    ----------
    Vijayakumar & Schaal (2000), "Locally Weighted Projection Regression: An O(n)
    algorithm for incremental real time learning in high dimensional space", ICML.
    Rasmussen & Williams (2006), *Gaussian Processes for Machine Learning*, ch. 2.5.
    The file: sarcos_inv_test.mat from probml/pmtkdata (no licence is stated).

    >>> from stream_mtl.datasets import SARCOS
    >>> dataset = SARCOS()
    >>> dataset
    SARCOS: 4,449 rows, 21 features, 7 tasks
    >>> first = next(iter(dataset))
    >>> round(first.x["q1"], 4), round(first.y["torque1"], 4)
    (0.0195, 50.2927)
    """

    filename = "sarcos_inv_test.npz"
    n_rows = 4449
    n_features = len(INPUTS)
    tasks: typing.ClassVar[dict[str, str]] = {f"torque{j}": REGRESSION for j in range(1, 8)}

    def _observations(self) -> list[Observation]:
        data = self.arrays()
        return [
            Observation(dict(zip(INPUTS, x)), dict(zip(self.tasks, y)))
            for x, y in zip(data["X_test"].tolist(), data["Y_test"].tolist())
        ]
