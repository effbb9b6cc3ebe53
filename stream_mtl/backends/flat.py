"""What both backends share: the model's structure and state, and everything but the trunk.

The model: a trunk of L layers; for every task, a head on each trunk layer's output
(depths 1..L, learned with SGD or Adam on flat buffers, see `layout`) and, at depth 0,
one second-order linear head on the inputs per forgetting factor (see `second_order`:
by default a slow one and a fast one, so that the mixture finds the memory the stream
needs, as in Arenas-Garcia, Figueiras-Vidal & Sayed (2006), "Mean-square performance
of a convex combination of two adaptive filters"), and one shared by every task of its
kind (with `share_linear`); and on the last trunk layer, one more head per factor of
`top_forgetting`, learned by the same second-order rule as the linear heads on the
layer's output (a read-out of the trunk's features that is good after a few dozen
labels, where the layer's own head needs thousands of gradient steps). Each task's
prediction is the Hedge mixture of all its heads (see `hedge`).

The trunk learns from the gradient-trained heads on its layers, each in proportion to
its mixture weight, the top heads' weight counted as the last layer's: the second-order
heads read the features and leave shaping them to the gradient (letting the trunk learn
through the top heads' residuals, which those heads make small at once, was measured in
`benchmarks/drift.py`: 8% worse final error on the stationary stream than no top heads).

The shared linear head is the multi-task model at depth 0: one second-order linear
model for all regression tasks (on their standardised targets) and one for all binary
tasks, learned from every task's labels (a Newton step on the sum of their losses), in
the spirit of Evgeniou & Pontil (2004), "Regularized multi-task learning", where each
task's model is a shared one plus its own. Here each task's mixture decides how much
to borrow from it: a lot where tasks are many and alike with few labels each, next to
nothing where they differ. Multiclass tasks do not share (their classes differ): their
shared head predicts nothing and keeps the floor weight.

A backend subclass supplies its array operations (`_zeros`, `_to_numpy`, `_from_numpy`),
binds the views it computes with in `_bind`, and runs the trunk and the deep heads:
`_deep_outputs` (forward) and `_backward` (gradient and optimiser step). The rest -
links, losses, gradients at the head outputs, the depth-0 heads, the mixture, and
state to and from plain NumPy arrays named as in `layout` - lives here once, on the
host in float64, so the backends' maths and states are the same by construction.
"""

from __future__ import annotations

import copy
import math
import typing

import numpy as np

from stream_mtl.backends.base import HeadSpec, RowsAsBatches, StepResult
from stream_mtl.backends.heads import (
    HeadColumns,
    evaluate,
    link,
    mixture_gradient,
    prediction_losses,
)
from stream_mtl.backends.hedge import Hedge
from stream_mtl.backends.init import ACTIVATIONS
from stream_mtl.backends.kernels import all_finite, all_finite_matrices
from stream_mtl.backends.layout import Layout, head_names, head_shapes, trunk_shapes
from stream_mtl.backends.second_order import SecondOrderHeads
from stream_mtl.exceptions import InvalidInput
from stream_mtl.tasks import BINARY, REGRESSION

OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# The rows of the shared linear head: one per kind that shares, and one that never learns.
SHARED_ROWS = {REGRESSION: 0, BINARY: 1}
_NOT_SHARED = len(SHARED_ROWS)


class FlatBackend(RowsAsBatches):
    """Base class of the backends (abstract): structure, state and the host-side maths."""

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
        forgetting: tuple[float, ...] = (0.999, 0.99),
        hedge_rate: float = 1.0,
        hedge_floor: float = 0.01,
        share_linear: bool = True,
        top_forgetting: tuple[float, ...] = (0.999, 0.99),
    ) -> None:
        if activation not in ACTIVATIONS:
            raise InvalidInput(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        if optimizer not in OPTIMIZERS:
            raise InvalidInput(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        self.hidden = tuple(hidden)
        self.activation = activation
        self.optimizer = optimizer
        self.lr = float(lr)
        self.dtype_name = dtype
        self.n_inputs = 0
        self.heads: list[HeadSpec] = []
        self._adam_step = 0
        self._layout = Layout({})
        self._slices: list[tuple[str, int, int]] = []
        # The parameters, and Adam's m and v as the two rows of `_moments`.
        self._param = self._zeros((0,))
        self._moments = self._zeros((2, 0))
        # Whether a step asked for the Gram matrix also returns the per-row task
        # gradients it is made of (soft sharing's members do; see `soft`).
        self.report_task_gradients = False
        self.linear = [SecondOrderHeads(factor) for factor in forgetting]
        self.shared = SecondOrderHeads(max(forgetting)) if share_linear else None
        self.top = [SecondOrderHeads(factor) for factor in top_forgetting] if hidden else []
        self.hedge = Hedge(self.n_heads, hedge_rate, hedge_floor, n_first=self.n_linear)
        self._relayout()

    # What only learning reads, left out of `predicting_copy` (a subclass adds its own).
    _LEARNING_ONLY: tuple[str, ...] = ("_moments",)

    def set_lr(self, lr: float) -> None:
        """Step with learning rate `lr` from now on (SGD and Adam alike)."""
        self.lr = float(lr)

    def predicting_copy(self) -> FlatBackend:
        """A deep copy that predicts exactly as this backend does now, without what only
        learning reads: the second-order heads' covariances (most of the memory of a
        model with many tasks or inputs), the optimiser's moments, gradients and
        scratch. What a snapshot holds; it must never learn."""
        heads = [*self.linear, *self.top, *([self.shared] if self.shared is not None else [])]
        memo: dict[int, typing.Any] = {
            id(array): None for head in heads for array in head.learning_only()
        }
        for name in self._LEARNING_ONLY:
            memo[id(getattr(self, name))] = None
        clone = copy.deepcopy(self, memo)
        clone._adam_step = 0  # the optimiser's: kept out, so that snapshots differ in arrays alone
        return clone

    # -- what a subclass supplies --------------------------------------------------------

    def _zeros(self, shape: tuple[int, ...]) -> typing.Any:
        raise NotImplementedError

    def _to_numpy(self, array: typing.Any) -> np.ndarray:
        raise NotImplementedError

    def _from_numpy(self, array: np.ndarray) -> typing.Any:
        raise NotImplementedError

    def _bind(self) -> None:
        """Called after every change of layout: bind views and per-step constants."""

    def _deep_outputs(self, X: np.ndarray, train: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw outputs of the heads at depths 1..L (L x rows x outputs, float64) and, where
        there are top heads to read it, the last trunk layer's output (rows x width,
        float64; else None); with `train`, keep what `_backward` needs."""
        raise NotImplementedError

    def _backward(self, dZ: np.ndarray, trunk_factor: np.ndarray) -> None:
        """One optimiser step after `_deep_outputs(X, train=True)`. The heads at depth d
        learn from gradient dZ[d-1] (rows x outputs) at their outputs; the trunk receives
        it multiplied per output by trunk_factor[d-1]."""
        raise NotImplementedError

    # -- structure ---------------------------------------------------------------------

    @property
    def n_linear(self) -> int:
        """Heads per task at depth 0: its own linear heads, and the shared one."""
        return len(self.linear) + (self.shared is not None)

    @property
    def n_heads(self) -> int:
        """Heads per task: the linear ones (depth 0), one per trunk layer, and the
        second-order ones on the last layer."""
        return self.n_linear + len(self.hidden) + len(self.top)

    @property
    def head_names(self) -> list[str]:
        """What each of a task's heads is, in mixture order."""
        linear = [f"linear({head.forgetting:g})" for head in self.linear]
        shared = ["shared"] if self.shared is not None else []
        deep = [f"layer{depth}" for depth in range(1, len(self.hidden) + 1)]
        return linear + shared + deep + [f"top({head.forgetting:g})" for head in self.top]

    def _relayout(self) -> None:
        sizes = {head.task: head.size for head in self.heads}
        new = Layout(
            {**trunk_shapes(self.n_inputs, self.hidden), **head_shapes(sizes, self.hidden)}
        )
        self._param = self._layout.relayout(self._param, new, self._zeros((new.size,)))
        moments = self._zeros((2, new.size))
        for row in range(2):
            self._layout.relayout(self._moments[row], new, moments[row])
        self._moments = moments
        self._layout = new
        starts = np.cumsum([0] + [head.size for head in self.heads])
        old = [(start, stop) for _, start, stop in self._slices]
        self._slices = [
            (head.kind, int(start), int(start + head.size))
            for head, start in zip(self.heads, starts)
        ]
        new_slices = [(a, b) for _, a, b in self._slices]
        for head in self.linear:
            head.resize(self.n_inputs, old, new_slices)
        for head in self.top:
            head.resize(self.hidden[-1], old, new_slices)
        if self.shared is not None:
            rows = [(0, _NOT_SHARED + 1)]
            self.shared.resize(self.n_inputs, rows if len(self.shared.weight) else [], rows)
        # Each output's row in the shared head, and (outputs x rows that learn) membership.
        self._shared_row = np.array(
            [
                SHARED_ROWS.get(kind, _NOT_SHARED)
                for kind, a, b in self._slices
                for _ in range(a, b)
            ],
            dtype=np.intp,
        )
        self._shared_membership = np.eye(_NOT_SHARED + 1)[self._shared_row]
        self._shared_membership[:, _NOT_SHARED] = 0.0  # that row never learns
        self.columns = HeadColumns(self._slices)
        self._column_task = self.columns.column_task
        # Sums head outputs' gradient products into per-task ones; None when there is
        # exactly one output per task (the common case), where no folding is needed.
        self._segments = None
        if len(self._column_task) != len(self.heads) or not all(h.size == 1 for h in self.heads):
            self._segments = np.eye(len(self.heads))[self._column_task]
        self._bind()

    def head_span(self, depth: int, block: str) -> slice:
        """Where the weights (`block="weight"`) or biases of all heads at `depth` lie."""
        weights, biases = head_names(depth, [h.task for h in self.heads])
        return self._layout.span(weights if block == "weight" else biases)

    def load_trunk(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the trunk's parameters (the first layer's rows fix the number of inputs)."""
        if self.hidden:
            self.n_inputs = arrays["trunk.0.weight"].shape[0]
            self._relayout()
        views = self._layout.views(self._param)
        for name, value in arrays.items():
            views[name][...] = self._from_numpy(value)

    def grow_inputs(self, first_layer_rows: np.ndarray) -> None:
        """Add inputs; `first_layer_rows` (n_new x first hidden width) are their weights
        in the trunk. The depth-0 heads give them weight 0."""
        n_old = self.n_inputs
        self.n_inputs += len(first_layer_rows)
        self._relayout()
        if self.hidden:
            first = self._layout.views(self._param)["trunk.0.weight"]
            first[n_old:] = self._from_numpy(first_layer_rows)

    def set_head(self, task: str, kind: str, size: int) -> None:
        """Add a task's heads, or grow them to `size` outputs (new outputs start at 0)."""
        for i, head in enumerate(self.heads):
            if head.task == task:
                if size < head.size:
                    raise InvalidInput(f"head {task!r} cannot shrink from {head.size} to {size}")
                self.heads[i] = HeadSpec(task, kind, size)
                break
        else:
            self.heads.append(HeadSpec(task, kind, size))
            self.hedge.add_task()
        self._relayout()

    def restart_task(self, position: int, share: float) -> None:
        """Make task `position` re-adapt fast (after a drift in it): `share` of its
        mixture moves onto its fastest-forgetting linear head, which re-fits within about
        1 / (1 - forgetting) labels. (Restarting the heads' curvature as well was measured
        in `benchmarks/drift.py`: no faster recovery, and three times the cost of a false
        alarm on a target with rare bursts.)"""
        fastest = min(range(len(self.linear)), key=lambda i: self.linear[i].forgetting)
        self.hedge.favour(position, fastest, share)

    # -- forward -------------------------------------------------------------------------

    def _head_outputs(
        self, X: np.ndarray, train: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw outputs of every head (heads x rows x outputs, float64), and the last trunk
        layer's output where top heads read it."""
        deep, top = self._deep_outputs(X, train)
        X = np.asarray(X, float)
        linear = [head.outputs(X) for head in self.linear]
        if self.shared is not None:
            linear.append(self.shared.outputs(X)[:, self._shared_row])
        tops = [head.outputs(top) for head in self.top]
        return np.concatenate([np.stack(linear), deep, *(t[None] for t in tops)]), top

    def _mix(self, P: np.ndarray) -> np.ndarray:
        """Each output's mixture of its heads' predictions P (heads x rows x outputs)."""
        alpha = self.hedge.alpha[self._column_task]  # outputs x heads
        return np.einsum("dno,od->no", P, alpha)

    def forward_many(self, X: np.ndarray) -> np.ndarray:
        """Predictions (rows x outputs): value, P(True) or class probabilities, mixed."""
        Z, _ = self._head_outputs(X)
        heads, n, n_out = Z.shape
        return self._mix(link(self.columns, Z.reshape(heads * n, n_out)).reshape(Z.shape))

    def input_jacobian(self, X: np.ndarray, n_inputs: int) -> np.ndarray:
        """d prediction / d input (rows x outputs x the first `n_inputs` inputs) of the
        mixed predictions at encoded rows X: each head's slope through its link, weighed
        by the mixture, summed (the deep heads' back through the trunk, ReLU's slope
        taken as 0 at 0 as the backward pass takes it). On the host, in float64."""
        X = np.asarray(X, float)
        n_out = len(self._column_task)
        if not n_out:
            return np.zeros((len(X), 0, n_inputs))
        host = np.asarray(self._to_numpy(self._param), float)
        offsets, shapes = self._layout.offsets, self._layout.shapes

        def view(name: str) -> np.ndarray:
            shape = shapes[name]
            return host[offsets[name] : offsets[name] + math.prod(shape)].reshape(shape)

        # Each head's weights on what it reads (outputs x width) and bias, by depth:
        # depth 0 the inputs, depth d the d-th layer's output.
        at_depth: list[list[tuple[np.ndarray, np.ndarray]]] = [
            [] for _ in range(len(self.hidden) + 1)
        ]
        for head in self.linear:
            at_depth[0].append((head.weight[:, 1:], head.weight[:, 0]))
        if self.shared is not None:
            rows = self.shared.weight[self._shared_row]
            at_depth[0].append((rows[:, 1:], rows[:, 0]))
        for depth, width in enumerate(self.hidden, start=1):
            weight = host[self.head_span(depth, "weight")].reshape(n_out, width)
            at_depth[depth].append((weight, host[self.head_span(depth, "bias")]))
        for head in self.top:
            at_depth[-1].append((head.weight[:, 1:], head.weight[:, 0]))
        # the mixture's order of heads: linear, shared, a layer's head per depth, top
        order = [(0, i) for i in range(len(at_depth[0]))]
        order += [(d, 0) for d in range(1, len(self.hidden) + 1)]
        order += [(len(self.hidden), 1 + t) for t in range(len(self.top))]
        alpha = self.hedge.alpha[self._column_task]  # outputs x heads
        slot = {place: h for h, place in enumerate(order)}
        relu = self.activation == "relu"
        out = np.empty((len(X), n_out, n_inputs))
        for r, x in enumerate(X):
            layers = [x]
            for i in range(len(self.hidden)):
                a = layers[-1] @ view(f"trunk.{i}.weight") + view(f"trunk.{i}.bias")
                layers.append(np.maximum(a, 0.0) if relu else np.tanh(a))
            grad = np.zeros((n_out, layers[-1].shape[0]))
            for depth in range(len(self.hidden), -1, -1):
                for i, (weight, bias) in enumerate(at_depth[depth]):
                    h = slot[(depth, i)]
                    grad += self._mixed_slope(alpha[:, h], weight @ layers[depth] + bias, weight)
                if depth:
                    a = layers[depth]
                    grad *= (a > 0.0) if relu else 1.0 - a * a
                    grad = grad @ view(f"trunk.{depth - 1}.weight").T
            out[r] = grad[:, :n_inputs]
        return out

    def _mixed_slope(self, alpha: np.ndarray, z: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """d mixed / d (what a head reads), outputs x width: the head's `weight` (outputs x
        width) times its raw outputs' `z` slopes through their links, times `alpha`."""
        p = link(self.columns, z[None, :])[0]
        diagonal = alpha * p
        _, cols = self.columns.binary
        diagonal[cols] *= 1.0 - p[cols]
        _, cols = self.columns.regression
        diagonal[cols] = alpha[cols]
        out = diagonal[:, None] * weight
        for _, start, stop in self.columns.multiclass:  # softmax: p_c (delta - p_c')
            block = slice(start, stop)
            out[block] -= (alpha[block] * p[block])[:, None] * (p[block] @ weight[block])
        return out

    # -- steps ---------------------------------------------------------------------------

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        """One step on the batch's rows: the deep heads and trunk take one optimiser step
        on the mean loss, the linear heads one Newton step, the mixture one Hedge step."""
        n = len(X)
        labelled = ~np.isnan(targets)
        T = np.where(labelled, targets, 0.0)
        Z, top = self._head_outputs(X, train=True)
        heads, _, n_out = Z.shape
        values = evaluate(
            self.columns,
            Z.reshape(heads * n, n_out),
            np.tile(T, (heads, 1)),
            np.tile(labelled, (heads, 1)),
        )
        P = values.prediction.reshape(Z.shape)
        G = values.gradient.reshape(Z.shape)
        mixed = self._mix(P)
        counts = labelled.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            losses = prediction_losses(self.columns, mixed, T, labelled).sum(axis=0) / counts
        column_task = self._column_task
        deep = slice(self.n_linear, self.n_linear + len(self.hidden))
        first_top = deep.stop
        if self.hidden:
            # Each deep head's gradient scaled by the task's loss weight; the trunk takes
            # it in proportion to the head's mixture weight, the top heads' weight counted
            # as the last layer's (their own gradients do not reach the trunk).
            scale = np.asarray(loss_weight, float)[column_task] / n
            trunk = self.hedge.alpha[column_task].T * np.asarray(trunk_scale)[column_task]
            factor = trunk[deep].copy()
            factor[-1] += trunk[first_top:].sum(axis=0)
            self._backward(G[deep] * scale, factor)
        curvature = values.curvature.reshape(Z.shape)
        labelled_outputs = labelled[:, column_task]
        for i, head in enumerate(self.linear):
            head.step(X, G[i], curvature[i], labelled_outputs)
        for i, head in enumerate(self.top):
            head.step(top, G[first_top + i], curvature[first_top + i], labelled_outputs)
        if self.shared is not None:
            # One Newton step on the sum of the losses of every output it serves, each
            # task's share scaled like its pull on the trunk: both are shared.
            i = len(self.linear)
            members = self._shared_membership * np.asarray(trunk_scale, float)[column_task, None]
            self.shared.step(
                X, G[i] @ members, curvature[i] @ members, labelled_outputs @ members > 0
            )
        vectors = task_gram = None
        if gram:
            raw, weight = self._gram_inputs(G[deep.stop - 1 if self.hidden else 0], counts)
            task_gram = self._task_gram(raw, weight)
            if self.report_task_gradients:
                vectors = self._task_gradients(raw, weight)
        self.hedge.update(mixture_gradient(self.columns, P, mixed, T, labelled), counts > 0)
        return StepResult(losses, task_gram, mixed, vectors)

    def _gram_inputs(self, G: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the tasks' gradients at the shared representation are made of: the
        gradient G (rows x outputs) at the deepest heads' outputs, each task's divided by
        its count of labels in the step (per-task means), and those heads' weights
        (outputs x width). The deepest heads read the last trunk layer or, with no trunk,
        the inputs (the first linear head). Task k's gradient is the sum over its outputs
        o of raw_o W_o."""
        raw = G / np.maximum(counts, 1)[self._column_task]
        if self.hidden:
            depth = len(self.hidden)
            weight = self._to_numpy(self._param[self.head_span(depth, "weight")])
            weight = np.asarray(weight, float).reshape(len(self._column_task), self.hidden[-1])
        else:
            weight = self.linear[0].weight[:, 1:]
        return raw, weight

    def _task_gram(self, raw: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Per-task gradient inner products at the shared representation: <g_k, g_l> sums
        D_op (W W^T)_op over o in k, p in l, with D = raw^T raw."""
        products = (raw.T @ raw) * (weight @ weight.T)
        if self._segments is None:
            return products
        return self._segments.T @ products @ self._segments

    def _task_gradients(self, raw: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Each row's per-task gradient at the shared representation (rows x tasks x
        width), whose products summed over rows are `_task_gram`'s."""
        per_output = raw[:, :, None] * weight[None]  # rows x outputs x width
        if self._segments is None:
            return per_output
        return np.einsum("row,ok->rkw", per_output, self._segments)

    @property
    def mixture_weights(self) -> np.ndarray:
        """Each task's mixture weight per head (tasks x heads; see `head_names`)."""
        return self.hedge.alpha

    @property
    def trunk_span(self) -> slice:
        """Where the trunk's blocks lie in the flat buffers (first, before the heads)."""
        if not self.hidden:
            return slice(0, 0)
        return self._layout.span(
            [name for name in self._layout.shapes if name.startswith("trunk.")]
        )

    def finite(self) -> bool:
        """Whether the trunk, the deep heads, the second-order heads' weights and the
        mixture are finite."""
        heads = (*self.linear, *self.top, *(() if self.shared is None else (self.shared,)))
        return self._finite(self._param) and all_finite_matrices(
            (self.hedge.alpha, *(head.weight for head in heads))
        )

    def _finite(self, buffer: typing.Any) -> bool:
        return all_finite(buffer)

    # -- state -------------------------------------------------------------------------

    def _state_buffers(self) -> dict[str, typing.Any]:
        buffers = {"param": self._param}
        if self.optimizer == "adam":
            buffers.update({"adam.m": self._moments[0], "adam.v": self._moments[1]})
        return buffers

    def state(self) -> dict[str, np.ndarray]:
        """Parameters, optimiser, depth-0 and mixture state as NumPy arrays."""
        arrays = {
            f"{prefix}.{name}": self._to_numpy(view).copy()
            for prefix, buffer in self._state_buffers().items()
            for name, view in self._layout.views(buffer).items()
        }
        if self.optimizer == "adam":
            arrays["adam.step"] = np.array(self._adam_step)
        for group, heads in (("linear", self.linear), ("top", self.top)):
            for i, second_order in enumerate(heads):
                for head, (_, start, stop) in zip(self.heads, self._slices):
                    name = f"{group}{i}.{head.task}"
                    arrays[f"{name}.weight"] = second_order.weight[start:stop].copy()
                    arrays[f"{name}.cov"] = second_order.cov[start:stop].copy()
        if self.shared is not None:
            arrays["shared.weight"] = self.shared.weight.copy()
            arrays["shared.cov"] = self.shared.cov.copy()
        arrays["hedge.alpha"] = self.hedge.alpha.copy()
        arrays["hedge.scale"] = self.hedge.scale.copy()
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned, from either backend; heads must already match."""
        first = self.heads[0].task if self.heads else None
        if self.hidden:
            self.n_inputs = arrays["param.trunk.0.weight"].shape[0]
        elif first is not None:
            self.n_inputs = arrays[f"linear0.{first}.weight"].shape[1] - 1
        self._relayout()
        for prefix, buffer in self._state_buffers().items():
            for name, view in self._layout.views(buffer).items():
                view[...] = self._from_numpy(_checked(arrays, f"{prefix}.{name}", view.shape))
        self._adam_step = int(arrays.get("adam.step", 0))
        size = self.n_inputs + 1
        top_size = self.hidden[-1] + 1 if self.hidden else 0
        for group, heads, width in (("linear", self.linear, size), ("top", self.top, top_size)):
            for i, second_order in enumerate(heads):
                for head, (_, start, stop) in zip(self.heads, self._slices):
                    rows, name = stop - start, f"{group}{i}.{head.task}"
                    weight = _checked(arrays, f"{name}.weight", (rows, width))
                    second_order.weight[start:stop] = weight
                    cov = _checked(arrays, f"{name}.cov", (rows, width, width))
                    second_order.cov[start:stop] = cov
        if self.shared is not None:
            rows = _NOT_SHARED + 1
            self.shared.weight[...] = _checked(arrays, "shared.weight", (rows, size))
            self.shared.cov[...] = _checked(arrays, "shared.cov", (rows, size, size))
        self.hedge.alpha = _checked(arrays, "hedge.alpha", self.hedge.alpha.shape).astype(float)
        self.hedge.scale = _checked(arrays, "hedge.scale", self.hedge.scale.shape).astype(float)

    def _adam_scalars(self) -> tuple[float, float]:
        """Advance Adam's step; return (sqrt(1 - beta2^t), sqrt(1 - beta2^t) / (1 - beta1^t)).

        Adam's update lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps), as `torch.optim.Adam`
        computes it, equals lr * step * m / (sqrt(v) + eps * root_bias2).
        """
        self._adam_step += 1
        beta1, beta2 = ADAM_BETAS
        root_bias2 = float(np.sqrt(1.0 - beta2**self._adam_step))
        return root_bias2, root_bias2 / (1.0 - beta1**self._adam_step)


def _checked(arrays: dict[str, np.ndarray], key: str, shape: tuple) -> np.ndarray:
    if key not in arrays:
        raise InvalidInput(f"backend state has no array {key!r}")
    if arrays[key].shape != tuple(shape):
        raise InvalidInput(
            f"backend array {key!r} has shape {arrays[key].shape}, expected {tuple(shape)}"
        )
    return arrays[key]
