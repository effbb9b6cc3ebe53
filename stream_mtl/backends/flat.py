"""What both backends share: named parameter blocks in flat buffers, grown and saved alike.

A backend subclass supplies its array operations (`_zeros`, `_to_numpy`, `_from_numpy`),
binds whatever views it computes with in `_bind`, and implements forward, step and
optimiser. Everything about structure - inputs, heads, per-head learning rates - and
about state - to and from plain NumPy arrays named as in `layout` - lives here once, so
the backends' states are interchangeable by construction.
"""

from __future__ import annotations

import typing

import numpy as np

from stream_mtl.backends.base import HeadSpec
from stream_mtl.backends.init import ACTIVATIONS
from stream_mtl.backends.layout import Layout, head_shapes, trunk_shapes

OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class FlatBackend:
    """Base class of the backends (abstract): structure and state, no arithmetic."""

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        self.hidden = tuple(hidden)
        self.activation = activation
        self.optimizer = optimizer
        self.lr = float(lr)
        self.dtype_name = dtype
        self.n_inputs = 0
        self.heads: list[HeadSpec] = []
        self._head_lr_scale = np.ones(0)
        self._head_lr_scale_given: np.ndarray | None = None
        self._adam_step = 0
        self._layout = Layout({})
        # The parameters, and Adam's m and v as the two rows of `_moments`.
        self._param = self._zeros((0,))
        self._moments = self._zeros((2, 0))
        self._relayout()

    # -- what a subclass supplies --------------------------------------------------------

    def _zeros(self, shape: tuple[int, ...]) -> typing.Any:
        raise NotImplementedError

    def _to_numpy(self, array: typing.Any) -> np.ndarray:
        raise NotImplementedError

    def _from_numpy(self, array: np.ndarray) -> typing.Any:
        raise NotImplementedError

    def _bind(self) -> None:
        """Called after every change of layout: bind views and per-step constants."""

    # -- structure ---------------------------------------------------------------------

    @property
    def width(self) -> int:
        """The width of what the heads read: the last hidden layer, or the inputs."""
        return self.hidden[-1] if self.hidden else self.n_inputs

    def _relayout(self) -> None:
        sizes = {head.task: head.size for head in self.heads}
        new = Layout({**trunk_shapes(self.n_inputs, self.hidden), **head_shapes(sizes, self.width)})
        self._param = self._layout.relayout(self._param, new, self._zeros((new.size,)))
        moments = self._zeros((2, new.size))
        for row in range(2):
            self._layout.relayout(self._moments[row], new, moments[row])
        self._moments = moments
        self._layout = new
        starts = np.cumsum([0] + [head.size for head in self.heads])
        self._slices = [
            (head.kind, int(start), int(start + head.size))
            for head, start in zip(self.heads, starts)
        ]
        self._column_task = np.repeat(np.arange(len(self.heads)), [h.size for h in self.heads])
        # Sums head outputs' gradient products into per-task ones; None when there is
        # exactly one output per task (the common case), where no folding is needed.
        self._segments = None
        if len(self._column_task) != len(self.heads) or not all(h.size == 1 for h in self.heads):
            self._segments = np.eye(len(self.heads))[self._column_task]
        self._lr_vector = self._build_lr_vector()
        self._bind()

    def _build_lr_vector(self) -> typing.Any:
        """Per-parameter learning rate, or None when every head uses the base rate."""
        if np.all(self._head_lr_scale == 1.0):
            return None
        vector = np.full(self._layout.size, self.lr)
        for head, scale in zip(self.heads, self._head_lr_scale):
            for block in (f"head.{head.task}.weight", f"head.{head.task}.bias"):
                vector[self._layout.span([block])] = self.lr * scale
        return self._from_numpy(vector)

    def load_trunk(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the trunk's parameters (the first layer's rows fix the number of inputs)."""
        if self.hidden:
            self.n_inputs = arrays["trunk.0.weight"].shape[0]
            self._relayout()
        views = self._layout.views(self._param)
        for name, value in arrays.items():
            views[name][...] = self._from_numpy(value)

    def grow_inputs(self, first_layer_rows: np.ndarray) -> None:
        n_old = self.n_inputs
        self.n_inputs += len(first_layer_rows)
        self._relayout()
        if self.hidden:
            first = self._layout.views(self._param)["trunk.0.weight"]
            first[n_old:] = self._from_numpy(first_layer_rows)

    def set_head(self, task: str, kind: str, size: int) -> None:
        for i, head in enumerate(self.heads):
            if head.task == task:
                if size < head.size:
                    raise ValueError(f"head {task!r} cannot shrink from {head.size} to {size}")
                self.heads[i] = HeadSpec(task, kind, size)
                break
        else:
            self.heads.append(HeadSpec(task, kind, size))
            self._head_lr_scale = np.append(self._head_lr_scale, 1.0)
        self._relayout()

    def set_head_lr_scale(self, scale: np.ndarray) -> None:
        if scale is self._head_lr_scale_given:
            return
        self._head_lr_scale_given = scale
        scale = np.asarray(scale, dtype=float)
        if not np.array_equal(scale, self._head_lr_scale):
            self._head_lr_scale = scale.copy()
            self._lr_vector = self._build_lr_vector()

    # -- state -------------------------------------------------------------------------

    def _state_buffers(self) -> dict[str, typing.Any]:
        buffers = {"param": self._param}
        if self.optimizer == "adam":
            buffers.update({"adam.m": self._moments[0], "adam.v": self._moments[1]})
        return buffers

    def state(self) -> dict[str, np.ndarray]:
        """Parameters and optimiser state as NumPy arrays, named as in `layout`."""
        arrays = {
            f"{prefix}.{name}": self._to_numpy(view).copy()
            for prefix, buffer in self._state_buffers().items()
            for name, view in self._layout.views(buffer).items()
        }
        if self.optimizer == "adam":
            arrays["adam.step"] = np.array(self._adam_step)
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned, from either backend; heads must already match."""
        if self.hidden:
            self.n_inputs = arrays["param.trunk.0.weight"].shape[0]
        elif self.heads:
            self.n_inputs = arrays[f"param.head.{self.heads[0].task}.weight"].shape[1]
        self._relayout()
        for prefix, buffer in self._state_buffers().items():
            for name, view in self._layout.views(buffer).items():
                key = f"{prefix}.{name}"
                if key not in arrays:
                    raise ValueError(f"backend state has no array {key!r}")
                if arrays[key].shape != tuple(view.shape):
                    raise ValueError(
                        f"backend array {key!r} has shape {arrays[key].shape}, "
                        f"expected {tuple(view.shape)}"
                    )
                view[...] = self._from_numpy(arrays[key])
        self._adam_step = int(arrays.get("adam.step", 0))

    def _adam_scalars(self) -> tuple[float, float]:
        """Advance Adam's step; return (sqrt(1 - beta2^t), sqrt(1 - beta2^t) / (1 - beta1^t)).

        Adam's update lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps), as `torch.optim.Adam`
        computes it, equals lr * step * m / (sqrt(v) + eps * root_bias2).
        """
        self._adam_step += 1
        beta1, beta2 = ADAM_BETAS
        root_bias2 = float(np.sqrt(1.0 - beta2**self._adam_step))
        return root_bias2, root_bias2 / (1.0 - beta1**self._adam_step)
