"""The torch backend: mini-batch steps on CPU or GPU, with the NumPy backend's maths and state.

Parameters and Adam's moments live on the device in flat tensors laid out like the
NumPy backend's (see `flat` and `layout`), so state moves between the two as plain
arrays. A step is one forward and one backward pass over the whole batch with all
heads fused into one matrix product; only the per-task losses come back to the host.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from stream_mtl.backends.base import StepResult
from stream_mtl.backends.flat import ADAM_BETAS, ADAM_EPS, FlatBackend
from stream_mtl.tasks import BINARY, MULTICLASS, REGRESSION

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
            raise ValueError(
                f"device {device!r} was asked for, but this torch build or machine has no CUDA; "
                "use device='cpu' or device='auto'"
            )
        resolved = torch.device(device)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return resolved
    raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'")


class TorchBackend(FlatBackend):
    """A shared MLP trunk and one head per task, trained in mini-batches with torch.

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

    def __init__(
        self,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        optimizer: str = "adam",
        lr: float = 1e-3,
        dtype: str = "float32",
        device: str = "cpu",
        mixed_precision: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.torch_dtype = _DTYPES[dtype]
        if mixed_precision and dtype != "float32":
            raise ValueError(
                "mixed_precision needs dtype='float32' (bf16 compute, fp32 master weights)"
            )
        self.mixed_precision = mixed_precision
        if self.device.type == "cpu" and torch.get_num_threads() != 1:
            logger.info("torch backend on CPU: using one thread (was %d)", torch.get_num_threads())
            torch.set_num_threads(1)
        super().__init__(hidden, activation, optimizer, lr, dtype)

    def _zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.torch_dtype, device=self.device)

    def _to_numpy(self, array: torch.Tensor) -> np.ndarray:
        return array.detach().cpu().numpy()

    def _from_numpy(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=self.torch_dtype, device=self.device)

    def _bind(self) -> None:
        """Index tensors that let the loss of every head be computed at once."""

        def index(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
            picked = [(task, start) for task, (k, start, _) in enumerate(self._slices) if k == kind]
            tasks = torch.tensor([t for t, _ in picked], dtype=torch.long, device=self.device)
            columns = torch.tensor([c for _, c in picked], dtype=torch.long, device=self.device)
            return tasks, columns

        self._regression = index(REGRESSION)
        self._binary = index(BINARY)
        self._multiclass = [
            (task, start, stop)
            for task, (kind, start, stop) in enumerate(self._slices)
            if kind == MULTICLASS and stop > start
        ]
        self._column_task_device = torch.as_tensor(self._column_task, device=self.device)

    # -- forward -----------------------------------------------------------------------

    def _outputs(self, param: torch.Tensor, X: torch.Tensor, trunk_scale: torch.Tensor | None):
        """Head outputs (in the parameters' dtype); with `trunk_scale`, the trunk sees each
        head's gradient scaled. With mixed precision the matrix products run in bf16."""
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.mixed_precision):
            return self._outputs_in_autocast(param, X, trunk_scale).to(self.torch_dtype)

    def _outputs_in_autocast(self, param, X, trunk_scale):
        views = self._layout.views(param)
        H = X
        for layer in range(len(self.hidden)):
            H = H @ views[f"trunk.{layer}.weight"] + views[f"trunk.{layer}.bias"]
            H = torch.relu(H) if self.activation == "relu" else torch.tanh(H)
        if not self.heads:
            return H.new_zeros((len(X), 0))
        weight = torch.cat([views[f"head.{h.task}.weight"] for h in self.heads])
        bias = torch.cat([views[f"head.{h.task}.bias"] for h in self.heads])
        if trunk_scale is None:
            return H @ weight.T + bias
        # Heads learn from H as it is; the trunk receives the gradient scaled per column.
        to_heads = H.detach() @ weight.T + bias
        to_trunk = (H @ weight.detach().T) * trunk_scale
        return to_heads + to_trunk - to_trunk.detach()

    def _inputs(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(X, dtype=self.torch_dtype).to(self.device, non_blocking=True)

    @torch.no_grad()
    def forward_many(self, X: np.ndarray) -> np.ndarray:
        return self._to_numpy(self._outputs(self._param, self._inputs(X), None))

    def forward_one(self, x: np.ndarray) -> np.ndarray:
        return self.forward_many(x[None, :])[0]

    # -- steps -------------------------------------------------------------------------

    def step_one(
        self,
        x: np.ndarray,
        targets: list,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        row = np.array([[np.nan if t is None else t for t in targets]], dtype=float)
        return self.step_many(x[None, :], row, loss_weight, trunk_scale, gram)

    def step_many(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        loss_weight: np.ndarray,
        trunk_scale: np.ndarray,
        gram: bool = False,
    ) -> StepResult:
        param = self._param.detach().requires_grad_(True)
        scale = None
        if np.any(trunk_scale != 1.0):
            scale = self._from_numpy(trunk_scale)[self._column_task_device]
        Z = self._outputs(param, self._inputs(X), scale)
        T = torch.as_tensor(targets, dtype=self.torch_dtype).to(self.device, non_blocking=True)
        task_losses, task_counts = self._task_losses(Z, T)
        means = task_losses / task_counts  # NaN where a task had no label
        raw = None
        if gram:
            (raw,) = torch.autograd.grad(
                (task_losses / task_counts.clamp(min=1)).sum(), Z, retain_graph=True
            )
        weights = self._from_numpy(loss_weight)
        total = (weights * task_losses).sum() / len(X)
        total.backward()
        with torch.no_grad():
            task_gram = None if raw is None else self._to_numpy(self._task_gram(raw, param))
            self._apply_gradient(param.grad)
        return StepResult(self._to_numpy(means).astype(float), task_gram)

    def _task_gram(self, raw: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """Per-task gradient inner products at the shared representation (see
        `NumpyBackend._task_gram`), from the unweighted gradient at the head outputs."""
        if not self.heads:
            return raw.new_zeros((0, 0))
        views = self._layout.views(param)
        weight = torch.cat([views[f"head.{h.task}.weight"] for h in self.heads])
        products = (raw.T @ raw) * (weight @ weight.T)
        if self._segments is None:
            return products
        segments = self._from_numpy(self._segments)
        return segments.T @ products @ segments

    def _task_losses(self, Z: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per task: the sum of its losses over labelled rows, and how many rows those are."""
        labelled = ~torch.isnan(T)
        T = torch.nan_to_num(T)
        losses = Z.new_zeros(T.shape)
        tasks, columns = self._regression
        if len(tasks):
            diff = Z[:, columns] - T[:, tasks]
            losses[:, tasks] = 0.5 * diff * diff
        tasks, columns = self._binary
        if len(tasks):
            losses[:, tasks] = F.binary_cross_entropy_with_logits(
                Z[:, columns], T[:, tasks], reduction="none"
            )
        for task, start, stop in self._multiclass:
            classes = T[:, task].long().clamp_(0, stop - start - 1)
            losses[:, task] = F.cross_entropy(Z[:, start:stop], classes, reduction="none")
        losses = torch.where(labelled, losses, torch.zeros_like(losses))
        return losses.sum(dim=0), labelled.sum(dim=0).to(Z.dtype)

    def _apply_gradient(self, grad: torch.Tensor) -> None:
        """SGD or Adam, with the same formula as the NumPy backend."""
        lr = self._lr_vector if self._lr_vector is not None else self.lr
        if self.optimizer == "sgd":
            self._param.sub_(grad * lr)
            return
        beta1, beta2 = ADAM_BETAS
        m, v = self._moments[0], self._moments[1]
        m.add_(grad - m, alpha=1.0 - beta1)
        v.add_(grad * grad - v, alpha=1.0 - beta2)
        root_bias2, step = self._adam_scalars()
        update = m / (v.sqrt() + ADAM_EPS * root_bias2)
        self._param.sub_(update * (lr * step))
