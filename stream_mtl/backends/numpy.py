"""The NumPy backend: the trunk and the heads on its layers, forward and backprop in NumPy.

Every parameter lives in one flat buffer (with views per block, see `layout`), and so
do its gradient and the optimiser's moments: an optimiser step is a handful of vector
operations whatever the number of layers and tasks. The same code serves one
observation (a batch of one row) and a mini-batch.
"""

from __future__ import annotations

import numpy as np

from stream_mtl.backends.flat import ADAM_BETAS, ADAM_EPS, FlatBackend


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

    _LEARNING_ONLY = (
        "_moments",
        "_grads",
        "_scratch",
        "_saved",
        "_grad_weights",
        "_grad_biases",
        "_grad_head_weights",
        "_grad_head_biases",
    )

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
        **mixture: float,
    ) -> None:
        self.dtype = np.dtype(dtype)
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
        param = self._layout.views(self._param)
        grad = self._layout.views(self._grads[0])
        n_layers = len(self.hidden)
        self._weights = [param[f"trunk.{i}.weight"] for i in range(n_layers)]
        self._biases = [param[f"trunk.{i}.bias"] for i in range(n_layers)]
        self._grad_weights = [grad[f"trunk.{i}.weight"] for i in range(n_layers)]
        self._grad_biases = [grad[f"trunk.{i}.bias"] for i in range(n_layers)]
        self._head_weights, self._head_biases = self._head_views(self._param)
        self._grad_head_weights, self._grad_head_biases = self._head_views(self._grads[0])

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
