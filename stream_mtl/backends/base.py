"""The protocol every backend implements; the learner talks to backends through it alone.

A backend holds a shared trunk and, per task, heads at every depth mixed by Hedge
(see `flat`), and knows each head's kind (for its link and loss), but nothing of
features, label values, weighting or drift: the learner hands it encoded inputs,
per-task targets and per-task weights, and gets back predictions or per-task losses.

Predictions are per head output: the value on the task's standardised scale
(regression), P(True) (binary) or each class's probability (multiclass).

Targets are per task: a scaled number (regression), 0.0/1.0 (binary) or a class
index (multiclass). For one observation they are a list with `None` for an
unlabelled task; for a batch, an (n_rows x n_tasks) array with NaN there.
"""

from __future__ import annotations

import typing

import numpy as np


class HeadSpec(typing.NamedTuple):
    """One task's head: its name, its kind and how many outputs it has."""

    task: str
    kind: str
    size: int


class StepResult(typing.NamedTuple):
    """What one optimiser step reports back to the learner.

    - `losses`: each task's mean loss (of its mixed prediction) over its labelled rows
      (NaN where it had none), a list or an array;
    - `gram` (when asked for, else None): the (n_tasks x n_tasks) inner products of
      the tasks' unweighted loss gradients with respect to the shared representation
      (what the heads read), taken over the rows of the step; zero rows and columns
      for unlabelled tasks.
      Its diagonal gives per-task gradient norms (GradNorm), its normalised form the
      cosine similarity of tasks (task affinity).

    - `predictions` (rows x outputs): the mixed predictions made before the step.
    - `task_gradients` (with `gram`, where the backend is asked to report them): each
      row's per-task gradients at the shared representation (rows x n_tasks x width),
      whose products summed over rows are `gram`; soft sharing builds its Gram matrix
      from its members'.
    - `finite`: whether the step left every parameter that `finite()` checks finite,
      where the backend learned it at no cost in the step; None: ask `finite()`.
    """

    losses: typing.Sequence[float] | np.ndarray
    gram: np.ndarray | None
    predictions: np.ndarray
    task_gradients: np.ndarray | None = None
    finite: bool | None = None


def target_row(targets: list) -> np.ndarray:
    """One observation's per-task targets (None where unlabelled) as a 1-row batch.

    >>> target_row([1.0, None]).tolist()
    [[1.0, nan]]
    """
    return np.array([[np.nan if t is None else t for t in targets]], dtype=float)


class RowsAsBatches:
    """`forward_one` and `step_one` as a batch of one row, for backends whose maths is
    batched (a mixin: the class supplies `forward_many` and `step_many`)."""

    def forward_one(self, x: np.ndarray) -> np.ndarray:
        return self.forward_many(x[None, :])[0]  # type: ignore[attr-defined]

    def step_one(
        self,
        x: np.ndarray,
        targets: list,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        row = target_row(targets)
        return self.step_many(x[None, :], row, loss_weight, trunk_scale, gram)  # type: ignore[attr-defined]


class Backend(typing.Protocol):
    hidden: tuple[int, ...]
    n_inputs: int
    heads: list[HeadSpec]

    def load_trunk(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the trunk's initial parameters (`trunk.{l}.weight`, `trunk.{l}.bias`)."""

    def grow_inputs(self, first_layer_rows: np.ndarray) -> None:
        """Add inputs; `first_layer_rows` (n_new x first hidden width) are their weights.

        With no hidden layer, the heads read the inputs directly and the new weights are 0.
        """

    def set_head(self, task: str, kind: str, size: int) -> None:
        """Add a head, or grow an existing head to `size` outputs (new outputs start at 0)."""

    def restart_task(self, position: int, share: float) -> None:
        """Make one task re-adapt fast (`share` of its mixture moves onto its fastest
        head)."""

    def set_lr(self, lr: float) -> None:
        """Step with learning rate `lr` from now on."""

    def forward_one(self, x: np.ndarray) -> np.ndarray:
        """Predictions (total outputs,) for one encoded input."""

    def forward_many(self, X: np.ndarray) -> np.ndarray:
        """Predictions (n_rows x total outputs) for encoded inputs."""

    def input_jacobian(self, X: np.ndarray, n_inputs: int) -> np.ndarray:
        """d prediction / d input (n_rows x total outputs x the first `n_inputs` inputs)."""

    def step_one(
        self,
        x: np.ndarray,
        targets: list,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        """One optimiser step on one observation; the loss of each task (NaN if unlabelled).

        The loss is the sum over labelled tasks of `loss_weight[k] * loss_k`; the shared
        parameters (the trunk, the shared linear head) receive each task's gradient
        further multiplied by `trunk_scale[k]`. With
        `gram`, the result also holds the tasks' gradient Gram matrix (see `StepResult`).
        """

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        """One optimiser step on the mean loss over the batch's rows; per-task mean losses."""

    @property
    def mixture_weights(self) -> np.ndarray:
        """Each task's mixture weight per head (tasks x heads; see `head_names`)."""

    def finite(self) -> bool:
        """Whether the parameters predictions read are all finite (cheap: every step)."""

    def state(self) -> dict[str, np.ndarray]:
        """Parameters and optimiser state as NumPy arrays (see `layout` for the names)."""

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned (from either backend); heads must already match."""
