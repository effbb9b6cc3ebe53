"""What a task-weighting strategy is: running per-task statistics in, one weight per task out.

The learner asks a strategy for the weights of the next step, takes the step, and
reports each task's loss (NaN for a task with no label in that step) and, for
strategies that want them, each task's gradient norm at the shared representation
(`needs_grad_norms`) and the tasks' affinity matrix whenever it is re-measured
(`needs_affinity`).
A strategy never sees a backend: it deals in numbers only. Its per-task statistics
are lists of floats ordered like the learner's tasks, so it checkpoints without pickle.
"""

from __future__ import annotations

import math
import typing

import numpy as np
from river import base


class StepWeights(typing.NamedTuple):
    """Per-task factors for one step, each an array ordered like the learner's tasks.

    - `loss`: the weight of each task's loss (what `task_weights` reports);
    - `trunk`: a further factor on each task's gradient into the shared trunk.
    """

    loss: np.ndarray
    trunk: np.ndarray


class WeightingStrategy(base.Base):
    """Base class of task-weighting strategies (abstract).

    A subclass names its per-task statistics in `_per_task` (attribute -> value for a
    new task); they are grown by `add_task`, reset by `reset_task` and saved by `state`.
    It implements `_observe` (take one step's numbers) and `_loss_weights`.
    """

    #: Per-task statistics: attribute name -> initial value. Each is a list of floats.
    _per_task: typing.ClassVar[dict[str, float]] = {}
    #: Whether `update` must be given each task's gradient norm.
    needs_grad_norms: typing.ClassVar[bool] = False
    #: Whether the learner must call `observe_affinity` (see `affinity.TaskAffinity`).
    needs_affinity: typing.ClassVar[bool] = False

    def __init__(self) -> None:
        self.tasks: list[str] = []
        for name in self._per_task:
            setattr(self, name, [])
        self._weights = StepWeights(np.ones(0), np.ones(0))

    # -- what a subclass supplies --------------------------------------------------------

    def _observe(self, losses: list[float], labelled: list[int], grad_norms: list[float]) -> None:
        """Take one step's per-task losses; `labelled` lists the tasks that had labels."""

    def _loss_weights(self) -> list[float]:
        return [1.0] * len(self.tasks)

    # -- what the learner calls ----------------------------------------------------------

    def add_task(self, task: str) -> None:
        """Start tracking a new task (a fresh head in the model)."""
        self.tasks.append(task)
        for name, initial in self._per_task.items():
            getattr(self, name).append(initial)
        self._refresh()

    def reset_task(self, position: int) -> None:
        """Forget what is known of one task's statistics (after a drift in it, say)."""
        for name, initial in self._per_task.items():
            getattr(self, name)[position] = initial
        self._refresh()

    def step_weights(self) -> StepWeights:
        """The factors to use for the next step."""
        return self._weights

    def update(
        self,
        losses: typing.Sequence[float],
        labelled: typing.Sequence[bool],
        step: int,
        grad_norms: typing.Sequence[float] | None = None,
    ) -> list[tuple[int, str]]:
        """Take the per-task losses of step `step` (NaN where unlabelled).

        `labelled[k]` says whether task k had labels; `grad_norms[k]` is the norm of task
        k's loss gradient at the shared representation. Lists or arrays. Returns the
        drifts detected in this step, as (task position, detector name); only
        drift-aware strategies detect any.
        """
        if isinstance(labelled, np.ndarray):
            labelled = labelled.tolist()
        positions = [k for k, flag in enumerate(labelled) if flag]
        if not positions:
            return []
        if isinstance(losses, np.ndarray):
            losses = losses.tolist()
        if isinstance(grad_norms, np.ndarray):
            grad_norms = grad_norms.tolist()
        return self._update(losses, positions, grad_norms or [])

    def _update(
        self, losses: list[float], labelled: list[int], grad_norms: list[float]
    ) -> list[tuple[int, str]]:
        """`update` on plain lists, with `labelled` the positions of the labelled tasks."""
        self._observe(losses, labelled, grad_norms)
        self._refresh()
        return []

    def observe_affinity(self, matrix: np.ndarray) -> None:
        """Take the tasks' affinity matrix (tasks x tasks, NaN where unknown), as the
        learner re-measures it; only strategies that `needs_affinity` use it."""

    def _refresh(self) -> None:
        loss = np.array(self._loss_weights(), dtype=float)
        trunk = self._weights.trunk
        if len(trunk) != len(loss):
            trunk = np.ones(len(loss))
        self._weights = StepWeights(loss, trunk)

    # -- checkpoints -----------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able metadata and arrays that `load_state` restores."""
        arrays = {name.lstrip("_"): np.array(getattr(self, name), float) for name in self._per_task}
        return {"tasks": list(self.tasks)}, arrays

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.tasks = list(meta["tasks"])
        for name in self._per_task:
            setattr(self, name, np.asarray(arrays[name.lstrip("_")], float).tolist())
        self._weights = StepWeights(np.ones(0), np.ones(0))
        self._refresh()


def running_rate(rate: float, seen: float) -> float:
    """The step size of an exponential moving average that starts as a plain mean."""
    return max(rate, 1.0 / seen)


def softmax_times_count(scores: list[float]) -> list[float]:
    """K * softmax(scores): weights that sum to the number of tasks.

    >>> [round(w, 3) for w in softmax_times_count([0.0, 0.0, math.log(2.0)])]
    [0.75, 0.75, 1.5]
    """
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    factor = len(scores) / sum(exps)
    return [e * factor for e in exps]
