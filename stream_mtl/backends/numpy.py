"""The NumPy backend: the trunk and the heads on its layers, forward and backprop in NumPy.

Every parameter lives in one flat buffer (with views per block, see `layout`), and so
do its gradient and the optimiser's moments: an optimiser step is a handful of vector
operations whatever the number of layers and tasks. The same code serves one
observation (a batch of one row) and a mini-batch.
"""

from __future__ import annotations

import typing

import numpy as np

from stream_mtl.backends import kernels, row_kernel
from stream_mtl.backends.base import StepResult
from stream_mtl.backends.flat import ADAM_BETAS, ADAM_EPS, FlatBackend
from stream_mtl.backends.kernels import kernel_array
from stream_mtl.backends.second_order import SecondOrderHeads
from stream_mtl.tasks import BINARY, MULTICLASS

_KIND_CODES = {BINARY: row_kernel.BINARY_CODE, MULTICLASS: row_kernel.MULTICLASS_CODE}


class NumpyBackend(FlatBackend):
    """A shared MLP trunk and Hedge-mixed heads per task, trained with SGD or Adam in NumPy.

    >>> from stream_mtl.backends.init import initial_trunk
    >>> backend = NumpyBackend(hidden=(4,), optimizer="sgd", lr=0.1, dtype="float64")
    >>> backend.load_trunk(initial_trunk(np.random.default_rng(0), (4,), "relu"))
    >>> backend.grow_inputs(np.ones((2, 4)))
    >>> backend.set_head("y", "regression", 1)
    >>> x = np.array([1.0, -1.0])
    >>> step = lambda: backend.step_one(x, [1.0], np.ones(1), np.ones(1)).losses[0]
    >>> losses = [step() for _ in range(50)]
    >>> bool(losses[0] > 0.4 and losses[-1] < 1e-3)
    True
    >>> backend.hedge.alpha.round(2).tolist()  # depth 0 (second-order) fitted it first
    [[...]]
    """

    _LEARNING_ONLY = ("_moments", "_grads", "_scratch", "_saved")

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
        compiled: bool = True,
        **mixture: float,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.compiled = compiled
        # `_grads` row 0 is the gradient, row 1 scratch for its square, so that Adam's
        # m and v (the rows of `_moments`) are updated together in four operations.
        self._adam_coef = np.array([[1.0 - ADAM_BETAS[0]], [1.0 - ADAM_BETAS[1]]], self.dtype)
        self._saved: list[np.ndarray] = []
        super().__init__(hidden, activation, optimizer, lr, dtype, **mixture)

    def _zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, self.dtype)

    def _to_numpy(self, array: np.ndarray) -> np.ndarray:
        return array

    def _from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=self.dtype)

    def _bind(self) -> None:
        size = self._layout.size
        self._grads = np.zeros((2, size), self.dtype)
        self._scratch = np.zeros(size, self.dtype)
        self._bind_views()
        self._bind_row_kernel()

    # Views into the flat buffers, bound again whenever the backend is unpickled or
    # deep-copied: copied along, they would be arrays of their own, and a step would
    # read and write the copies while the buffers stayed where they were.
    _VIEWS = (
        "_weights",
        "_biases",
        "_grad_weights",
        "_grad_biases",
        "_head_weights",
        "_head_biases",
        "_grad_head_weights",
        "_grad_head_biases",
    )

    def _bind_views(self) -> None:
        n_layers = len(self.hidden)
        param = self._layout.views(self._param)
        self._weights = [param[f"trunk.{i}.weight"] for i in range(n_layers)]
        self._biases = [param[f"trunk.{i}.bias"] for i in range(n_layers)]
        self._head_weights, self._head_biases = self._head_views(self._param)
        if self._grads is None:  # a predicting copy (see `predicting_copy`)
            self._grad_weights = self._grad_biases = []
            self._grad_head_weights = self._grad_head_biases = []
            return
        grad = self._layout.views(self._grads[0])
        self._grad_weights = [grad[f"trunk.{i}.weight"] for i in range(n_layers)]
        self._grad_biases = [grad[f"trunk.{i}.bias"] for i in range(n_layers)]
        self._grad_head_weights, self._grad_head_biases = self._head_views(self._grads[0])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind_views()

    # -- one row, compiled ---------------------------------------------------------------

    def _bind_row_kernel(self) -> None:
        """Where `row_kernel` finds the trunk's and heads' blocks in the flat buffer, and
        each task's kind and columns; whether it serves this model (it needs a trunk, a
        linear head and a top head: other models take the NumPy path)."""
        self._row_kernel = bool(
            self.compiled and self.hidden and self.linear and self.top and self.heads
        )
        if not self._row_kernel:
            return
        offsets = self._layout.offsets
        tasks = [head.task for head in self.heads]
        self._widths = np.array([self.n_inputs, *self.hidden], dtype=np.int64)
        self._trunk_at = np.array(
            [
                [offsets[f"trunk.{i}.weight"], offsets[f"trunk.{i}.bias"]]
                for i in range(len(self.hidden))
            ],
            dtype=np.int64,
        )
        self._heads_at = np.array(
            [
                [offsets[f"head{d}.{tasks[0]}.weight"], offsets[f"head{d}.{tasks[0]}.bias"]]
                for d in range(1, len(self.hidden) + 1)
            ],
            dtype=np.int64,
        )
        self._task_kind = np.array(
            [_KIND_CODES.get(kind, row_kernel.REGRESSION_CODE) for kind, _, _ in self._slices],
            dtype=np.int64,
        )
        self._task_start = np.array([a for _, a, _ in self._slices], dtype=np.int64)
        self._task_stop = np.array([b for _, _, b in self._slices], dtype=np.int64)
        self._column_task64 = self._column_task.astype(np.int64)
        self._shared_row64 = self._shared_row.astype(np.int64)
        self._linear_factors = _factors(self.linear)
        self._top_factors = _factors(self.top)

    def _shared_head(self) -> SecondOrderHeads:
        return self.shared if self.shared is not None else self.linear[0]

    def forward_many(self, X: np.ndarray) -> np.ndarray:
        if not (self._row_kernel and len(X) == 1):
            return super().forward_many(X)
        shared_w = self._shared_head().weight
        mixed = row_kernel.row_predict(
            kernel_array(X[0]), self._param, self._widths, self._trunk_at, self._heads_at,
            self.activation == "relu", tuple(head.weight for head in self.linear), shared_w,
            self._shared_row64, self.shared is not None,
            tuple(head.weight for head in self.top), self._column_task64, self._task_kind,
            self._task_start, self._task_stop, self.hedge.alpha,
        )  # fmt: skip
        return mixed[None, :]

    def input_jacobian(self, X: np.ndarray, n_inputs: int) -> np.ndarray:
        if not (self._row_kernel and len(X) == 1):
            return super().input_jacobian(X, n_inputs)
        jacobian = row_kernel.row_jacobian(
            kernel_array(X[0]), self._param, self._widths, self._trunk_at, self._heads_at,
            self.activation == "relu", tuple(head.weight for head in self.linear),
            self._shared_head().weight, self._shared_row64, self.shared is not None,
            tuple(head.weight for head in self.top), self._column_task64, self._task_kind,
            self._task_start, self._task_stop, self.hedge.alpha, n_inputs,
        )  # fmt: skip
        return jacobian[None]

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        if gram or not (self._row_kernel and len(X) == 1):
            return super().step_many(X, targets, loss_weight, trunk_scale, gram)
        adam = self.optimizer == "adam"
        root_bias2, step = self._adam_scalars() if adam else (1.0, 1.0)
        shared = self._shared_head()
        linear = [head.compiled_state() for head in self.linear]
        top = [head.compiled_state() for head in self.top]
        losses = np.empty(len(self.heads))
        mixed, finite = row_kernel.row_step(
            kernel_array(X[0]), kernel_array(targets[0]), kernel_array(loss_weight),
            kernel_array(trunk_scale), self._param, self._moments, self._widths,
            self._trunk_at, self._heads_at, self.activation == "relu", adam, self.lr,
            root_bias2, step, tuple(head.weight for head in self.linear),
            tuple(cov for cov, _ in linear), tuple(twin for _, twin in linear),
            *self._linear_factors, shared.weight, *shared.compiled_state(), shared.forgetting,
            shared.prior, self._shared_row64, self.shared is not None,
            tuple(head.weight for head in self.top), tuple(cov for cov, _ in top),
            tuple(twin for _, twin in top), *self._top_factors, self._column_task64,
            self._task_kind, self._task_start, self._task_stop, self.hedge.alpha,
            self.hedge.scale, float(self.hedge.rate), float(self.hedge.memory),
            self.hedge.floor / self.hedge.n_heads, losses,
        )  # fmt: skip
        return StepResult(losses, None, mixed[None, :], finite=finite)

    def _head_views(self, buffer: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """At each depth, every head's weights as one (outputs x width) matrix, biases as one
        vector."""
        n_out = sum(head.size for head in self.heads)
        weights, biases = [], []
        for depth, width in enumerate(self.hidden, start=1):
            if not self.heads:
                weights.append(np.zeros((0, width), self.dtype))
                biases.append(np.zeros(0, self.dtype))
                continue
            weights.append(buffer[self.head_span(depth, "weight")].reshape(n_out, width))
            biases.append(buffer[self.head_span(depth, "bias")])
        return weights, biases

    # -- forward and backward ------------------------------------------------------------

    def _layers(self, X: np.ndarray) -> list[np.ndarray]:
        """The inputs and every trunk layer's output, row by row."""
        outputs = [X.astype(self.dtype, copy=False)]
        relu = self.activation == "relu"
        for weight, bias in zip(self._weights, self._biases):
            a = outputs[-1] @ weight
            a += bias
            if relu:
                np.maximum(a, 0.0, out=a)
            else:
                np.tanh(a, out=a)
            outputs.append(a)
        return outputs

    def _deep_outputs(self, X: np.ndarray, train: bool) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._layers(X)
        if train:
            self._saved = outputs
        Z = np.empty((len(self.hidden), len(X), len(self._column_task)))
        for depth in range(1, len(self.hidden) + 1):
            Z[depth - 1] = outputs[depth] @ self._head_weights[depth - 1].T
            Z[depth - 1] += self._head_biases[depth - 1]
        return Z, outputs[-1].astype(float) if self.top else None

    def _activation_grad(self, dh: np.ndarray, out: np.ndarray) -> np.ndarray:
        """d(loss)/d(pre-activation) from d(loss)/d(output) and the layer's output."""
        if self.activation == "relu":
            return dh * (out > 0)
        return dh * (1.0 - out * out)

    def _backward(self, dZ: np.ndarray, trunk_factor: np.ndarray) -> None:
        outputs = self._saved
        dZ = dZ.astype(self.dtype)
        trunk_factor = trunk_factor.astype(self.dtype)
        dH = None
        for depth in range(len(self.hidden), 0, -1):
            layer, h, dz = depth - 1, outputs[depth], dZ[depth - 1]
            np.matmul(dz.T, h, out=self._grad_head_weights[layer])
            self._grad_head_biases[layer][:] = dz.sum(axis=0)
            from_heads = (dz * trunk_factor[layer]) @ self._head_weights[layer]
            dH = from_heads if dH is None else dH + from_heads
            dA = self._activation_grad(dH, h)
            self._grad_biases[layer][:] = dA.sum(axis=0)
            np.matmul(outputs[layer].T, dA, out=self._grad_weights[layer])
            if layer:
                dH = dA @ self._weights[layer].T
        self._saved = []
        self._apply_gradient()

    # -- optimiser ---------------------------------------------------------------------

    def _apply_gradient(self) -> None:
        """SGD or Adam (as `torch.optim.Adam` computes it) on the whole flat buffer."""
        update = self._scratch
        if self.optimizer == "sgd":
            np.multiply(self._grads[0], self.lr, out=update)
            self._param -= update
            return
        grads, moments = self._grads, self._moments
        np.multiply(grads[0], grads[0], out=grads[1])
        grads -= moments
        grads *= self._adam_coef
        moments += grads  # m += (1-b1)(g-m), v += (1-b2)(g^2-v)
        root_bias2, step = self._adam_scalars()
        np.sqrt(moments[1], out=update)
        update += ADAM_EPS * root_bias2
        np.divide(moments[0], update, out=update)
        update *= self.lr * step
        self._param -= update


def _factors(heads: list) -> tuple[np.ndarray, np.ndarray]:
    """Second-order heads' forgetting factors and priors, as `row_kernel` takes them."""
    return np.array([head.forgetting for head in heads]), np.array([head.prior for head in heads])


def warm_up(backend: typing.Any = None) -> None:
    """Compile every kernel of the per-observation path now, or load it from numba's
    cache (see `kernels`): the building blocks, and one row's prediction and step for
    `backend`'s settings (the default model's when None or not a `NumpyBackend`), so
    that no prediction or observation waits for a compile."""
    kernels.warm_up()
    like = backend if isinstance(backend, NumpyBackend) else NumpyBackend()
    tiny = NumpyBackend(
        hidden=(2,),
        activation=like.activation,
        optimizer=like.optimizer,
        dtype=like.dtype_name,
        forgetting=tuple(head.forgetting for head in like.linear),
        share_linear=like.shared is not None,
        top_forgetting=tuple(head.forgetting for head in like.top),
    )
    tiny.grow_inputs(np.zeros((1, 2)))
    tiny.set_head("task", "regression", 1)
    tiny.step_many(np.zeros((1, 1)), np.zeros((1, 1)), np.ones(1), np.ones(1))
    tiny.forward_many(np.zeros((1, 1)))
    tiny.input_jacobian(np.zeros((1, 1)), 1)
    tiny.finite()
