"""The NumPy backend: forward, backprop and optimiser for one observation at a time.

Every parameter lives in one flat buffer (with views per block, see `layout`), and so
do its gradient and the optimiser's moments: an optimiser step is a handful of vector
operations whatever the number of layers and tasks. On the per-observation path each
NumPy call costs about a microsecond, so the step avoids every call it can: per-task
link and loss are computed on Python floats for single-output heads.
"""

from __future__ import annotations

import math

import numpy as np

from stream_mtl.backends.base import StepResult
from stream_mtl.backends.flat import ADAM_BETAS, ADAM_EPS, FlatBackend
from stream_mtl.tasks import BINARY, MULTICLASS, REGRESSION


def _softplus(z: float) -> float:
    return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class NumpyBackend(FlatBackend):
    """A shared MLP trunk and one head per task, trained with SGD or Adam in NumPy.

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
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
    ) -> None:
        self.dtype = np.dtype(dtype)
        # `_grads` row 0 is the gradient, row 1 scratch for its square, so that Adam's
        # m and v (the rows of `_moments`) are updated together in four operations.
        self._adam_coef = np.array([[1.0 - ADAM_BETAS[0]], [1.0 - ADAM_BETAS[1]]], self.dtype)
        super().__init__(hidden, activation, optimizer, lr, dtype)

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
        self._head_weight, self._head_bias = self._head_views(self._param)
        self._grad_head_weight, self._grad_head_bias = self._head_views(self._grads[0])

    def _head_views(self, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every head's weights as one (total outputs x width) matrix, biases as one vector."""
        if not self.heads:
            return np.zeros((0, self.width), self.dtype), np.zeros(0, self.dtype)
        n_out = sum(head.size for head in self.heads)
        weights = self._layout.span([f"head.{h.task}.weight" for h in self.heads])
        biases = self._layout.span([f"head.{h.task}.bias" for h in self.heads])
        return buffer[weights].reshape(n_out, self.width), buffer[biases]

    # -- forward -----------------------------------------------------------------------

    def _layers(self, x: np.ndarray) -> list[np.ndarray]:
        """The input and every trunk layer's output (rows of a batch, or one observation)."""
        outputs = [x.astype(self.dtype, copy=False)]
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

    def _activation_grad(self, dh: np.ndarray, out: np.ndarray) -> np.ndarray:
        """d(loss)/d(pre-activation) from d(loss)/d(output) and the layer's output."""
        if self.activation == "relu":
            return dh * (out > 0)
        return dh * (1.0 - out * out)

    def forward_one(self, x: np.ndarray) -> np.ndarray:
        z = self._head_weight @ self._layers(x)[-1]
        z += self._head_bias
        return z

    def forward_many(self, X: np.ndarray) -> np.ndarray:
        Z = self._layers(X)[-1] @ self._head_weight.T
        Z += self._head_bias
        return Z

    # -- one observation ----------------------------------------------------------------

    def step_one(
        self,
        x: np.ndarray,
        targets: list,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        outputs = self._layers(x)
        h = outputs[-1]
        z = self._head_weight @ h
        z += self._head_bias
        losses, raw, dz, dz_trunk = self._head_gradients(z, targets, loss_weight, trunk_scale)
        task_gram = self._task_gram(np.outer(raw, raw)) if gram else None
        self._grad_head_bias[:] = dz
        np.multiply(dz[:, None], h[None, :], out=self._grad_head_weight)
        dh = dz_trunk @ self._head_weight
        for layer in range(len(self.hidden) - 1, -1, -1):
            da = self._activation_grad(dh, outputs[layer + 1])
            self._grad_biases[layer][:] = da
            np.multiply(outputs[layer][:, None], da[None, :], out=self._grad_weights[layer])
            if layer:
                dh = self._weights[layer] @ da
        self._apply_gradient()
        return StepResult(losses, task_gram)

    def _head_gradients(
        self, z: np.ndarray, targets: list, loss_weight: np.ndarray, trunk_scale: np.ndarray
    ) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
        """Per-task losses; the unweighted gradient at the head outputs; the weighted one
        the heads learn from; and the one the trunk learns from (also trunk-scaled).

        On Python floats: for a few single-output heads that is faster than NumPy calls.
        """
        zs = z.tolist()
        weights = loss_weight.tolist()
        n_out = len(zs)
        raw = [0.0] * n_out
        dz = [0.0] * n_out
        losses = [math.nan] * len(targets)
        for task, (kind, start, stop) in enumerate(self._slices):
            target = targets[task]
            if target is None:
                continue
            if kind == REGRESSION:
                diff = zs[start] - target
                losses[task] = 0.5 * diff * diff
                raw[start] = diff
            elif kind == BINARY:
                logit = zs[start]
                losses[task] = _softplus(logit) - target * logit
                raw[start] = _sigmoid(logit) - target
            else:
                logits = z[start:stop].astype(float)
                shift = logits.max()
                exp = np.exp(logits - shift)
                total = exp.sum()
                losses[task] = shift + math.log(total) - logits[target]
                grad = exp / total
                grad[target] -= 1.0
                raw[start:stop] = grad.tolist()
            weight = weights[task]
            for out in range(start, stop):
                dz[out] = weight * raw[out]
        dz_array = np.array(dz, dtype=self.dtype)
        if not np.any(trunk_scale != 1.0):
            return losses, raw, dz_array, dz_array
        dz_trunk = np.array(dz) * trunk_scale[self._column_task]
        return losses, raw, dz_array, dz_trunk.astype(self.dtype)

    def _task_gram(self, output_products: np.ndarray) -> np.ndarray:
        """Per-task gradient inner products at the shared representation, from the head
        outputs' gradient products D (n_out x n_out): task k's gradient is the sum over
        its outputs o of dZ_o W_o, so <g_k, g_l> sums D_op (W W^T)_op over o in k, p in l.
        """
        weight = self._head_weight
        products = output_products * (weight @ weight.T)
        if self._segments is None:
            return products
        return self._segments.T @ products @ self._segments

    # -- a mini-batch -------------------------------------------------------------------

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        n_rows = len(X)
        outputs = self._layers(X)
        H = outputs[-1]
        Z = H @ self._head_weight.T
        Z += self._head_bias
        losses, counts, G = batch_head_gradients(self._slices, Z, targets)
        column_task = self._column_task
        task_gram = None
        if gram:
            raw = G / np.maximum(counts, 1)[column_task]
            task_gram = self._task_gram(raw.T @ raw)
        dZ = (G * (loss_weight[column_task] / n_rows)).astype(self.dtype)
        self._grad_head_bias[:] = dZ.sum(axis=0)
        np.matmul(dZ.T, H, out=self._grad_head_weight)
        dH = (dZ * trunk_scale[column_task].astype(self.dtype)) @ self._head_weight
        for layer in range(len(self.hidden) - 1, -1, -1):
            dA = self._activation_grad(dH, outputs[layer + 1])
            self._grad_biases[layer][:] = dA.sum(axis=0)
            np.matmul(outputs[layer].T, dA, out=self._grad_weights[layer])
            if layer:
                dH = dA @ self._weights[layer].T
        self._apply_gradient()
        return StepResult(losses, task_gram)

    # -- optimiser ---------------------------------------------------------------------

    def _apply_gradient(self) -> None:
        """SGD or Adam (as `torch.optim.Adam` computes it) on the whole flat buffer."""
        update = self._scratch
        if self.optimizer == "sgd":
            np.multiply(
                self._grads[0],
                self._lr_vector if self._lr_vector is not None else self.lr,
                out=update,
            )
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
        if self._lr_vector is None:
            update *= self.lr * step
        else:
            update *= self._lr_vector
            update *= step
        self._param -= update


def batch_head_gradients(
    slices: list[tuple[str, int, int]], Z: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per task: the mean loss over labelled rows and their count; and each row's
    gradient of its own (unweighted) task losses at the head outputs Z (0 if unlabelled)."""
    G = np.zeros(Z.shape)
    losses = np.full(len(slices), np.nan)
    counts = np.zeros(len(slices))
    for task, (kind, start, stop) in enumerate(slices):
        target = targets[:, task]
        labelled = ~np.isnan(target)
        count = labelled.sum()
        if not count:
            continue
        rows = np.flatnonzero(labelled)
        t = target[rows]
        z = Z[rows, start:stop].astype(float)
        if kind == REGRESSION:
            diff = z[:, 0] - t
            loss = 0.5 * diff * diff
            grad = diff[:, None]
        elif kind == BINARY:
            logit = z[:, 0]
            loss = np.logaddexp(0.0, logit) - t * logit
            grad = (0.5 * (1.0 + np.tanh(0.5 * logit)) - t)[:, None]
        elif kind == MULTICLASS:
            classes = t.astype(np.intp)
            shift = z.max(axis=1, keepdims=True)
            exp = np.exp(z - shift)
            total = exp.sum(axis=1, keepdims=True)
            loss = (shift + np.log(total))[:, 0] - z[np.arange(len(rows)), classes]
            grad = exp / total
            grad[np.arange(len(rows)), classes] -= 1.0
        else:
            raise ValueError(f"unknown head kind {kind!r}")
        losses[task] = loss.mean()
        counts[task] = count
        G[rows, start:stop] = grad
    return losses, counts, G
