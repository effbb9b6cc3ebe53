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

from stream_mtl.backends.base import HeadSpec
from stream_mtl.backends.init import ACTIVATIONS
from stream_mtl.backends.layout import Layout, head_shapes, trunk_shapes
from stream_mtl.tasks import BINARY, MULTICLASS, REGRESSION

OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _softplus(z: float) -> float:
    return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class NumpyBackend:
    """A shared MLP trunk and one head per task, trained with SGD or Adam in NumPy.

    >>> from stream_mtl.backends.init import initial_trunk
    >>> backend = NumpyBackend(hidden=(4,), optimizer="sgd", lr=0.1, dtype="float64")
    >>> backend.load_trunk(initial_trunk(np.random.default_rng(0), (4,), "relu"))
    >>> backend.grow_inputs(np.ones((2, 4)))
    >>> backend.set_head("y", "regression", 1)
    >>> x = np.array([1.0, -1.0])
    >>> losses = [backend.step_one(x, [1.0], np.ones(1), np.ones(1))[0] for _ in range(50)]
    >>> losses[0] > 0.4 and losses[-1] < 1e-3
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
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        self.hidden = tuple(hidden)
        self.activation = activation
        self.optimizer = optimizer
        self.lr = float(lr)
        self.dtype = np.dtype(dtype)
        self.n_inputs = 0
        self.heads: list[HeadSpec] = []
        self._head_lr_scale = np.ones(0)
        self._head_lr_scale_given: np.ndarray | None = None
        self._adam_step = 0
        self._layout = Layout({})
        # Row 0 of `_grads` is the gradient, row 1 scratch for its square; `_moments` holds
        # Adam's m and v as rows, so updating both is four vector operations.
        self._param = np.zeros(0, self.dtype)
        self._grads = np.zeros((2, 0), self.dtype)
        self._moments = np.zeros((2, 0), self.dtype)
        self._adam_coef = np.array([[1.0 - ADAM_BETAS[0]], [1.0 - ADAM_BETAS[1]]], self.dtype)
        self._relayout(self._shapes())

    # -- structure ---------------------------------------------------------------------

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        width = self.hidden[-1] if self.hidden else self.n_inputs
        sizes = {head.task: head.size for head in self.heads}
        return {**trunk_shapes(self.n_inputs, self.hidden), **head_shapes(sizes, width)}

    def _relayout(self, shapes: dict[str, tuple[int, ...]]) -> None:
        new = Layout(shapes)
        self._param = self._layout.relayout(self._param, new)
        self._moments = np.stack([self._layout.relayout(row, new) for row in self._moments])
        self._grads = np.zeros((2, new.size), self.dtype)
        self._scratch = np.zeros(new.size, self.dtype)
        self._layout = new
        self._bind_views()

    def _bind_views(self) -> None:
        param = self._layout.views(self._param)
        grad = self._layout.views(self._grads[0])
        n_layers = len(self.hidden)
        self._weights = [param[f"trunk.{i}.weight"] for i in range(n_layers)]
        self._biases = [param[f"trunk.{i}.bias"] for i in range(n_layers)]
        self._grad_weights = [grad[f"trunk.{i}.weight"] for i in range(n_layers)]
        self._grad_biases = [grad[f"trunk.{i}.bias"] for i in range(n_layers)]
        width = self.hidden[-1] if self.hidden else self.n_inputs
        n_out = sum(head.size for head in self.heads)
        buffers = (self._param, self._grads[0])
        if self.heads:
            weight_span = self._layout.span([f"head.{h.task}.weight" for h in self.heads])
            bias_span = self._layout.span([f"head.{h.task}.bias" for h in self.heads])
            self._head_weight, self._grad_head_weight = (
                b[weight_span].reshape(n_out, width) for b in buffers
            )
            self._head_bias, self._grad_head_bias = (b[bias_span] for b in buffers)
        else:
            self._head_weight = self._grad_head_weight = np.zeros((0, width), self.dtype)
            self._head_bias = self._grad_head_bias = np.zeros(0, self.dtype)
        starts = np.cumsum([0] + [head.size for head in self.heads])
        self._slices = [
            (head.kind, int(start), int(start + head.size))
            for head, start in zip(self.heads, starts)
        ]
        self._column_task = np.repeat(np.arange(len(self.heads)), [h.size for h in self.heads])
        self._lr_vector = self._build_lr_vector()

    def _build_lr_vector(self) -> np.ndarray | None:
        """Per-parameter learning rate, or None when every head uses the base rate."""
        if np.all(self._head_lr_scale == 1.0):
            return None
        vector = np.full(self._layout.size, self.lr, dtype=self.dtype)
        for head, scale in zip(self.heads, self._head_lr_scale):
            for block in (f"head.{head.task}.weight", f"head.{head.task}.bias"):
                vector[self._layout.span([block])] = self.lr * scale
        return vector

    def load_trunk(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the trunk's parameters (the first layer's rows fix the number of inputs)."""
        if self.hidden:
            self.n_inputs = arrays["trunk.0.weight"].shape[0]
            self._relayout(self._shapes())
        views = self._layout.views(self._param)
        for name, value in arrays.items():
            views[name][...] = value

    def grow_inputs(self, first_layer_rows: np.ndarray) -> None:
        n_old = self.n_inputs
        self.n_inputs += len(first_layer_rows)
        self._relayout(self._shapes())
        if self.hidden:
            self._weights[0][n_old:] = first_layer_rows

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
        self._relayout(self._shapes())

    def set_head_lr_scale(self, scale: np.ndarray) -> None:
        if scale is self._head_lr_scale_given:
            return
        self._head_lr_scale_given = scale
        scale = np.asarray(scale, dtype=float)
        if not np.array_equal(scale, self._head_lr_scale):
            self._head_lr_scale = scale.copy()
            self._lr_vector = self._build_lr_vector()

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
    ) -> list[float]:
        outputs = self._layers(x)
        h = outputs[-1]
        z = self._head_weight @ h
        z += self._head_bias
        losses, dz, dz_trunk = self._head_gradients(z, targets, loss_weight, trunk_scale)
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
        return losses

    def _head_gradients(
        self, z: np.ndarray, targets: list, loss_weight: np.ndarray, trunk_scale: np.ndarray
    ) -> tuple[list[float], np.ndarray, np.ndarray]:
        """Per-task losses, and the gradient at the head outputs for heads and trunk."""
        zs = z.tolist()
        n_out = len(zs)
        dz = [0.0] * n_out
        dz_trunk = [0.0] * n_out
        losses = [math.nan] * len(targets)
        plain = True
        for task, (kind, start, stop) in enumerate(self._slices):
            target = targets[task]
            if target is None:
                continue
            weight = float(loss_weight[task])
            scale = float(trunk_scale[task])
            plain = plain and scale == 1.0
            if kind == REGRESSION:
                diff = zs[start] - target
                losses[task] = 0.5 * diff * diff
                dz[start] = weight * diff
            elif kind == BINARY:
                logit = zs[start]
                losses[task] = _softplus(logit) - target * logit
                dz[start] = weight * (_sigmoid(logit) - target)
            else:
                logits = z[start:stop].astype(float)
                shift = logits.max()
                exp = np.exp(logits - shift)
                total = exp.sum()
                losses[task] = shift + math.log(total) - logits[target]
                grad = exp / total
                grad[target] -= 1.0
                dz[start:stop] = (weight * grad).tolist()
            if scale != 1.0:
                dz_trunk[start:stop] = [scale * g for g in dz[start:stop]]
            else:
                dz_trunk[start:stop] = dz[start:stop]
        dz_array = np.array(dz, dtype=self.dtype)
        trunk_array = dz_array if plain else np.array(dz_trunk, dtype=self.dtype)
        return losses, dz_array, trunk_array

    # -- a mini-batch -------------------------------------------------------------------

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
    ) -> np.ndarray:
        n_rows = len(X)
        outputs = self._layers(X)
        H = outputs[-1]
        Z = H @ self._head_weight.T
        Z += self._head_bias
        losses, dZ = batch_head_gradients(self._slices, Z, targets, loss_weight)
        dZ /= n_rows
        self._grad_head_bias[:] = dZ.sum(axis=0)
        np.matmul(dZ.T, H, out=self._grad_head_weight)
        dH = (dZ * trunk_scale[self._column_task].astype(self.dtype)) @ self._head_weight
        for layer in range(len(self.hidden) - 1, -1, -1):
            dA = self._activation_grad(dH, outputs[layer + 1])
            self._grad_biases[layer][:] = dA.sum(axis=0)
            np.matmul(outputs[layer].T, dA, out=self._grad_weights[layer])
            if layer:
                dH = dA @ self._weights[layer].T
        self._apply_gradient()
        return losses

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
        self._adam_step += 1
        beta1, beta2 = ADAM_BETAS
        root_bias2 = math.sqrt(1.0 - beta2**self._adam_step)
        step = root_bias2 / (1.0 - beta1**self._adam_step)
        # lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps), with sqrt(bias2) moved to the scalars.
        np.sqrt(moments[1], out=update)
        update += ADAM_EPS * root_bias2
        np.divide(moments[0], update, out=update)
        if self._lr_vector is None:
            update *= self.lr * step
        else:
            update *= self._lr_vector
            update *= step
        self._param -= update

    # -- state -------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        buffers = {"param": self._param}
        if self.optimizer == "adam":
            buffers.update({"adam.m": self._moments[0], "adam.v": self._moments[1]})
        arrays = {
            f"{prefix}.{name}": view.copy()
            for prefix, buffer in buffers.items()
            for name, view in self._layout.views(buffer).items()
        }
        if self.optimizer == "adam":
            arrays["adam.step"] = np.array(self._adam_step)
        return arrays

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if self.hidden:
            self.n_inputs = arrays["param.trunk.0.weight"].shape[0]
        elif self.heads:
            self.n_inputs = arrays[f"param.head.{self.heads[0].task}.weight"].shape[1]
        self._relayout(self._shapes())
        buffers = {"param": self._param}
        if self.optimizer == "adam":
            buffers.update({"adam.m": self._moments[0], "adam.v": self._moments[1]})
        for prefix, buffer in buffers.items():
            for name, view in self._layout.views(buffer).items():
                key = f"{prefix}.{name}"
                if key not in arrays:
                    raise ValueError(f"backend state has no array {key!r}")
                if arrays[key].shape != view.shape:
                    raise ValueError(
                        f"backend array {key!r} has shape {arrays[key].shape}, "
                        f"expected {view.shape}"
                    )
                view[...] = arrays[key]
        self._adam_step = int(arrays.get("adam.step", 0))


def batch_head_gradients(
    slices: list[tuple[str, int, int]],
    Z: np.ndarray,
    targets: np.ndarray,
    loss_weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-task mean losses over labelled rows, and d(sum of weighted losses)/dZ."""
    dZ = np.zeros_like(Z)
    losses = np.full(len(slices), np.nan)
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
        dZ[rows, start:stop] = loss_weight[task] * grad
    return losses, dZ
