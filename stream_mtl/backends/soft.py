"""Soft parameter sharing: a network per task, each trunk pulled toward the tasks' mean.

Hard sharing (every other backend) gives all tasks one trunk. Soft sharing gives each
task a whole model of its own - a trunk of the same widths and the task's heads at
every depth, a member backend (NumPy or torch) holding one task - and after every step
pulls each member's trunk toward a consensus of the members' trunks:

    W_k <- W_k - c (W_k - C),    c = min(1, lr * strength),
    C = mean_j W_j (before the step) + sum_j (the step of W_j)

the step of an L2 penalty (strength / 2) sum_k |W_k - mean W|^2 taken apart from the
optimiser's own step, as AdamW decouples weight decay (Loshchilov & Hutter, "Decoupled
Weight Decay Regularization", ICLR 2019): the pull is the same whatever Adam's scaling
of the task's gradients. The penalty is the one of Duong, Cohn, Bird & Cook, "Low
Resource Dependency Parsing: Cross-lingual Parameter Sharing in a Neural Network
Parser" (ACL 2015) and Yang & Hospedales, "Trace Norm Regularised Deep Multi-Task
Learning" (ICLR 2017 workshop), toward the mean rather than between pairs.

The consensus C moves by every member's step, not by their mean: the trunks' mean then
moves by (1 + c (n - 1)) times the members' mean step, so by the sum of their steps at
c = 1, as one trunk under hard sharing moves by the step of the tasks' summed gradient
(with SGD, the same step). Pulled toward the plain mean, the trunks would move by the
members' mean step at full strength: with SGD, n times slower than one shared trunk.
Strength 0 leaves the tasks' models independent; from 1 / lr on, the trunks are
replaced by the consensus after every step: one trunk, moved by every task's step, each
scaled by its own member's optimiser state (Adam's, per task).

A new task's member starts from the tasks' mean trunk (before any task, the initial
trunk). Members share nothing else: each has its own depth-0 heads (the shared linear
head, with one task, is the task's own). The cost per step is one step of every member
whose task is labelled, plus the pull: about n_tasks times hard sharing's trunk work.

The Gram matrix of the tasks' gradients (GradNorm, Relatedness) is built from each
task's gradient at its own trunk's last layer, unit by unit: meaningful while the
trunks are held close (strength > 0), as they start from one trunk and are pulled
together; with strength 0 the units of different trunks drift apart and the off-diagonal
products mean little.
"""

from __future__ import annotations

import copy
import typing

import numpy as np

from stream_mtl.backends.base import HeadSpec, RowsAsBatches, StepResult
from stream_mtl.backends.flat import FlatBackend
from stream_mtl.backends.heads import HeadColumns
from stream_mtl.backends.layout import Layout, trunk_shapes
from stream_mtl.checkpoint import arrays_under
from stream_mtl.exceptions import InvalidInput

MEMBER_PREFIX = "soft"


class SoftSharing(RowsAsBatches):
    """One member backend per task, their trunks pulled toward the tasks' mean.

    Implements the `Backend` protocol; `make_member` makes an empty member backend (all
    alike: the same widths, optimiser and mixture settings).

    Parameters
    ----------
    make_member
        Makes one empty member backend (`NumpyBackend` or `TorchBackend`).
    strength
        Strength of the pull toward the mean trunk (0: independent models).

    >>> from stream_mtl.backends.init import initial_trunk
    >>> from stream_mtl.backends.numpy import NumpyBackend
    >>> def learn(strength):
    ...     member = lambda: NumpyBackend(hidden=(4,), optimizer="sgd", lr=0.1)
    ...     backend = SoftSharing(member, strength)
    ...     backend.load_trunk(initial_trunk(np.random.default_rng(0), (4,), "relu"))
    ...     backend.grow_inputs(np.ones((2, 4)))
    ...     backend.set_head("product", "regression", 1)
    ...     backend.set_head("size", "regression", 1)
    ...     rng = np.random.default_rng(0)
    ...     for _ in range(200):
    ...         x = rng.normal(size=2)
    ...         backend.step_one(x, [x[0] * x[1], abs(x[0])], np.ones(2), np.ones(2))
    ...     return backend
    >>> [round(learn(strength).trunk_spread(), 3) for strength in (0.0, 1.0, 10.0)]
    [0.3, 0.005, 0.0]
    """

    def __init__(self, make_member: typing.Callable[[], FlatBackend], strength: float) -> None:
        if not strength >= 0:
            raise InvalidInput(f"soft sharing strength must be >= 0, got {strength!r}")
        self._make_member = make_member
        self.strength = float(strength)
        # Holds the initial trunk (no heads), from which the first tasks' members start.
        self._prototype = make_member()
        self.members: list[FlatBackend] = []
        self.hidden = self._prototype.hidden
        self.columns = HeadColumns([])
        self._unchecked: set[int] = set()  # members that learned since `finite` last looked

    @property
    def heads(self) -> list[HeadSpec]:
        """Every member's head, in task order."""
        return [member.heads[0] for member in self.members]

    @property
    def n_inputs(self) -> int:
        return self._prototype.n_inputs

    @property
    def head_names(self) -> list[str]:
        return self._prototype.head_names

    @property
    def mixture_weights(self) -> np.ndarray:
        if not self.members:
            return np.zeros((0, self._prototype.n_heads))
        return np.concatenate([member.mixture_weights for member in self.members])

    def set_lr(self, lr: float) -> None:
        for member in (self._prototype, *self.members):
            member.set_lr(lr)

    def predicting_copy(self) -> SoftSharing:
        clone = copy.copy(self)
        clone.members = [member.predicting_copy() for member in self.members]
        clone._prototype = self._prototype.predicting_copy()
        return clone

    # -- structure -----------------------------------------------------------------------

    def load_trunk(self, arrays: dict[str, np.ndarray]) -> None:
        self._prototype.load_trunk(arrays)
        for member in self.members:
            member.load_trunk(arrays)

    def grow_inputs(self, first_layer_rows: np.ndarray) -> None:
        self._prototype.grow_inputs(first_layer_rows)
        for member in self.members:
            member.grow_inputs(first_layer_rows)

    def set_head(self, task: str, kind: str, size: int) -> None:
        tasks = [head.task for head in self.heads]
        if task in tasks:
            self.members[tasks.index(task)].set_head(task, kind, size)
        else:
            member = self._make_member()
            member.set_lr(self._prototype.lr)  # the group's, where it is not the model's
            member.report_task_gradients = True
            member.load_trunk(self._mean_trunk())
            member.set_head(task, kind, size)
            self.members.append(member)
        starts = np.cumsum([0] + [head.size for head in self.heads])
        self.columns = HeadColumns(
            [(head.kind, int(a), int(a + head.size)) for head, a in zip(self.heads, starts)]
        )

    def _trunks(self) -> list[typing.Any]:
        """Each member's trunk: a view of its flat parameters (the backend's array type)."""
        span = self._prototype.trunk_span
        return [member._param[span] for member in self.members]

    def _mean_trunk(self) -> dict[str, np.ndarray]:
        """The trunk a new task starts from: the members' mean (the prototype's before
        any), as named blocks."""
        members = self.members or [self._prototype]
        span = self._prototype.trunk_span
        mean = np.mean([member._to_numpy(member._param[span]) for member in members], axis=0)
        return Layout(trunk_shapes(self.n_inputs, self.hidden)).views(mean)

    def restart_task(self, position: int, share: float) -> None:
        self.members[position].restart_task(0, share)

    # -- forward and steps ---------------------------------------------------------------

    def forward_many(self, X: np.ndarray) -> np.ndarray:
        if not self.members:
            return np.zeros((len(X), 0))
        return np.concatenate([member.forward_many(X) for member in self.members], axis=1)

    def input_jacobian(self, X: np.ndarray, n_inputs: int) -> np.ndarray:
        if not self.members:
            return np.zeros((len(X), 0, n_inputs))
        return np.concatenate([m.input_jacobian(X, n_inputs) for m in self.members], axis=1)

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        """Each labelled task's member takes its step; then the pull toward the mean.

        The predictions made before the step are NaN for the tasks the batch does not
        label (their members do no work in it)."""
        width = self.hidden[-1]
        losses = np.full(len(self.members), np.nan)
        mixed = np.full((len(X), self.columns.n_outputs), np.nan)
        vectors = np.zeros((len(X), len(self.members), width)) if gram else None
        labelled = np.flatnonzero(~np.isnan(targets).all(axis=0)).tolist()
        trunks = self._trunks()
        pulling = self._share() > 0.0 and len(self.members) > 1
        before = {k: trunks[k] * 1.0 for k in labelled} if pulling else {}
        for k in labelled:
            _, start, stop = self.columns.slices[k]
            result = self.members[k].step_many(
                X, targets[:, k : k + 1], loss_weight[k : k + 1], trunk_scale[k : k + 1], gram
            )
            self._unchecked.add(k)
            losses[k] = result.losses[0]
            mixed[:, start:stop] = result.predictions
            if vectors is not None:
                vectors[:, k] = result.task_gradients[:, 0]
        if pulling:
            self._pull(sum(trunks[k] - before[k] for k in labelled))
        task_gram = np.einsum("rkw,rlw->kl", vectors, vectors) if vectors is not None else None
        return StepResult(losses, task_gram, mixed, vectors)

    def _share(self) -> float:
        """The share c = min(1, lr * strength) of the way to the consensus that every
        trunk moves after a step."""
        return min(1.0, self._prototype.lr * self.strength)

    def _pull(self, steps: typing.Any) -> None:
        """Move every member's trunk the share c of the way to the consensus: the mean
        trunk before the step, moved on by the sum of the members' `steps` (as one trunk
        under hard sharing moves by the step of the tasks' summed gradient)."""
        trunks = self._trunks()
        n = len(trunks)
        # The mean before the step plus the steps' sum, from the mean after the step.
        consensus = sum(trunks[1:], trunks[0] * 1.0) / n + steps * ((n - 1) / n)
        share = self._share()
        for trunk in trunks:
            trunk -= (trunk - consensus) * share

    def trunk_spread(self) -> float:
        """The root-mean-square distance of the members' trunk parameters from their mean."""
        if len(self.members) < 2:
            return 0.0
        trunks = np.array([np.asarray(self._prototype._to_numpy(t), float) for t in self._trunks()])
        return float(np.sqrt(np.mean((trunks - trunks.mean(axis=0)) ** 2)))

    def finite(self) -> bool:
        """Whether the members that learned since the last check are finite: the others'
        heads have not changed, and their trunks moved toward a mean of finite trunks."""
        unchecked, self._unchecked = self._unchecked, set()
        return all(self.members[k].finite() for k in unchecked)

    # -- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Every member's state, under `soft.{task}.`, and the initial trunk's inputs."""
        arrays = {
            f"{MEMBER_PREFIX}.{head.task}.{name}": value
            for head, member in zip(self.heads, self.members)
            for name, value in member.state().items()
        }
        arrays.update({f"prototype.{k}": v for k, v in self._prototype.state().items()})
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._prototype.load_state(arrays_under(arrays, "prototype."))
        for head, member in zip(self.heads, self.members):
            member.load_state(arrays_under(arrays, f"{MEMBER_PREFIX}.{head.task}."))
        self._unchecked = set(range(len(self.members)))
