"""The torch backend: mini-batch steps on CPU or GPU, with the NumPy backend's maths and state.

The trunk's and deep heads' parameters and Adam's moments live on the device in flat
tensors laid out like the NumPy backend's (see `flat` and `layout`), so state moves
between the two as plain arrays. A step is one forward and one backward pass over the
whole batch with all heads of a depth fused into one matrix product. The head outputs
come back to the host, where the links, losses, the depth-0 heads and the mixture are
computed in float64 by the code both backends share (`flat`); the gradient at the head
outputs goes back to the device for the backward pass.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from stream_mtl.backends.flat import ADAM_BETAS, ADAM_EPS, FlatBackend
from stream_mtl.exceptions import InvalidInput

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str) -> torch.device:
    """`"cpu"`, `"cuda"`, `"cuda:N"` or `"auto"` (CUDA when present) as a torch device.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInput(
                f"device {device!r} was asked for, but this torch build or machine has no CUDA; "
                "use device='cpu' or device='auto'"
            )
        resolved = torch.device(device)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidInput(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return resolved
    raise InvalidInput(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")


def _host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 NumPy array on the host."""
    return tensor.detach().to(torch.float64).cpu().numpy()


class TorchBackend(FlatBackend):
    """A shared MLP trunk and Hedge-mixed heads per task, trained in mini-batches with torch.

    On the CPU it runs on one thread: for the small matrices of streaming models a
    second thread gives nothing, and it would compete with the stream's own work.
    `mixed_precision=True` runs the forward and backward matrix products in bf16
    (torch autocast) while weights, optimiser state and losses stay in float32.

    >>> from stream_mtl.backends.init import initial_trunk
    >>> backend = TorchBackend(hidden=(4,), optimizer="sgd", lr=0.1, dtype="float64")
    >>> backend.load_trunk(initial_trunk(np.random.default_rng(0), (4,), "relu"))
    >>> backend.grow_inputs(np.ones((2, 4)))
    >>> backend.set_head("y", "regression", 1)
    >>> X, targets = np.array([[1.0, -1.0]] * 8), np.ones((8, 1))
    >>> step = lambda: backend.step_many(X, targets, np.ones(1), np.ones(1)).losses[0]
    >>> losses = [step() for _ in range(50)]
    >>> bool(losses[0] > 0.4 and losses[-1] < 1e-3)
    True
    """

    _LEARNING_ONLY = ("_moments", "_graph")

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
        device: str = "cpu",
        mixed_precision: bool = False,
        **mixture: float,
    ) -> None:
        self.device = resolve_device(device)
        self.torch_dtype = _DTYPES[dtype]
        if mixed_precision and dtype != "float32":
            raise InvalidInput(
                "mixed_precision needs dtype='float32' (bf16 compute, fp32 master weights)"
            )
        self.mixed_precision = mixed_precision
        if self.device.type == "cpu" and torch.get_num_threads() != 1:
            logger.info("torch backend on CPU: using one thread (was %d)", torch.get_num_threads())
            torch.set_num_threads(1)
        self._graph: tuple = ()
        super().__init__(hidden, activation, optimizer, lr, dtype, **mixture)

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.torch_dtype, device=self.device)

    def _to_numpy(self, array: torch.Tensor) -> np.ndarray:
        return array.detach().cpu().numpy()

    def _from_numpy(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=self.torch_dtype, device=self.device)

    # -- forward and backward ------------------------------------------------------------

    def _finite(self, buffer: torch.Tensor) -> bool:
        return bool(torch.isfinite(buffer).all())

    def _deep_outputs(self, X: np.ndarray, train: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.hidden:
            return np.zeros((0, len(X), len(self._column_task))), None
        inputs = torch.as_tensor(X, dtype=self.torch_dtype).to(self.device, non_blocking=True)
        if not train:
            with torch.no_grad():
                to_heads, _, top = self._outputs(self._param, inputs)
        else:
            param = self._param.detach().requires_grad_(True)
            to_heads, to_trunk, top = self._outputs(param, inputs)
            self._graph = (param, to_heads, to_trunk)
        return self._stack(to_heads), _host(top) if self.top else None

    def _stack(self, outputs: list[torch.Tensor]) -> np.ndarray:
        return _host(torch.stack(outputs))

    def _outputs(
        self, param: torch.Tensor, X: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per depth, the heads' outputs twice over: once as the heads learn from them (the
        trunk's output detached) and once as the trunk does (the heads' weights detached);
        and the last layer's output. With mixed precision the matrix products run in bf16."""
        views = self._layout.views(param)
        names = [h.task for h in self.heads]
        to_heads, to_trunk = [], []
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.mixed_precision):
            H = X
            for layer in range(len(self.hidden)):
                H = H @ views[f"trunk.{layer}.weight"] + views[f"trunk.{layer}.bias"]
                H = torch.relu(H) if self.activation == "relu" else torch.tanh(H)
                if not names:
                    to_heads.append(H.new_zeros((len(X), 0)))
                    to_trunk.append(H.new_zeros((len(X), 0)))
                    continue
                weight = torch.cat([views[f"head{layer + 1}.{t}.weight"] for t in names])
                bias = torch.cat([views[f"head{layer + 1}.{t}.bias"] for t in names])
                to_heads.append((H.detach() @ weight.T + bias).to(self.torch_dtype))
                to_trunk.append((H @ weight.detach().T).to(self.torch_dtype))
        return to_heads, to_trunk, H

    def _backward(self, dZ: np.ndarray, trunk_factor: np.ndarray) -> None:
        param, to_heads, to_trunk = self._graph
        self._graph = ()
        grad_heads = self._from_numpy(dZ)
        grad_trunk = grad_heads * self._from_numpy(trunk_factor)[:, None, :]
        torch.autograd.backward(
            [*to_heads, *to_trunk], [*grad_heads.unbind(0), *grad_trunk.unbind(0)]
        )
        with torch.no_grad():
            self._apply_gradient(param.grad)

    def _apply_gradient(self, grad: torch.Tensor) -> None:
        """SGD or Adam, with the same formula as the NumPy backend."""
        if self.optimizer == "sgd":
            self._param.sub_(grad * self.lr)
            return
        beta1, beta2 = ADAM_BETAS
        m, v = self._moments[0], self._moments[1]
        m.add_(grad - m, alpha=1.0 - beta1)
        v.add_(grad * grad - v, alpha=1.0 - beta2)
        root_bias2, step = self._adam_scalars()
        update = m / (v.sqrt() + ADAM_EPS * root_bias2)
        self._param.sub_(update * (self.lr * step))


def warm_up(device: str = "cpu") -> None:
    """One tiny batch step and prediction on `device`: torch loads parts of itself on a
    first backward pass (about 0.3 s here, more on a GPU's first kernels), which would
    otherwise fall on the first mini-batch learned."""
    tiny = TorchBackend(hidden=(2,), device=device)
    tiny.grow_inputs(np.zeros((1, 2)))
    tiny.set_head("task", "regression", 1)
    tiny.step_many(np.zeros((2, 1)), np.zeros((2, 1)), np.ones(1), np.ones(1))
    tiny.forward_many(np.zeros((2, 1)))
