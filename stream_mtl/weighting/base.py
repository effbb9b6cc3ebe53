"""What a task-weighting strategy is: running per-task statistics in, one weight per task out.

The learner asks a strategy for the weights of the next step, takes the step, and
reports each task's loss (NaN for a task with no label in that step). A strategy
never sees a backend: it deals in numbers only. Its per-task state is kept in
arrays ordered like the learner's tasks, so it checkpoints without pickle.
"""

from __future__ import annotations

import typing

import numpy as np
from river import base


class StepWeights(typing.NamedTuple):
    """Per-task factors for one step, each an array ordered like the learner's tasks.

    - `loss`: the weight of each task's loss (what `task_weights` reports);
    - `trunk`: a further factor on each task's gradient into the shared trunk;
    - `head_lr`: a factor on each task's head learning rate.
    """

    loss: np.ndarray
    trunk: np.ndarray
    head_lr: np.ndarray


class WeightingStrategy(base.Base):
    """Base class of task-weighting strategies (abstract)."""

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self._weights = StepWeights(np.ones(0), np.ones(0), np.ones(0))

    def add_task(self, task: str) -> None:
        """Start tracking a new task (a fresh head in the model)."""
        self.tasks.append(task)
        self._weights = StepWeights(*(np.append(w, 1.0) for w in self._weights))

    def step_weights(self) -> StepWeights:
        """The factors to use for the next step."""
        return self._weights

    def update(self, losses: np.ndarray, labelled: np.ndarray, step: int) -> None:
        """Take the per-task losses of step `step`; `labelled[k]` says whether task k had labels."""

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able metadata and arrays that `load_state` restores."""
        return {"tasks": list(self.tasks)}, {
            f"weights.{name}": value for name, value in self._weights._asdict().items()
        }

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.tasks = list(meta["tasks"])
        self._weights = StepWeights(
            *(np.array(arrays[f"weights.{name}"], dtype=float) for name in StepWeights._fields)
        )
