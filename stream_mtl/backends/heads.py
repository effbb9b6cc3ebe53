"""Head maths every backend shares: link, loss, gradient and curvature per task kind.

A head output z becomes a prediction through its task's link: the value itself
(regression, on the task's standardised scale), P(True) = sigmoid(z) (binary) or the
class probabilities softmax(z) over the task's outputs (multiclass). The loss is
0.5 (z - t)^2, the logistic loss or the cross-entropy; its gradient at z is
prediction - target in all three cases, and its curvature (the diagonal of its
Hessian in z) is 1, p (1 - p) and p_c (1 - p_c). Everything here is vectorised over
rows and computed on the host in float64, so both backends share it exactly.
"""

from __future__ import annotations

import typing

import numpy as np

from stream_mtl.tasks import BINARY, MULTICLASS, REGRESSION

_TINY = 1e-12


class HeadColumns:
    """Which output columns belong to which task, grouped by kind.

    >>> columns = HeadColumns([("regression", 0, 1), ("multiclass", 1, 4)])
    >>> columns.column_task.tolist(), columns.multiclass
    ([0, 1, 1, 1], [(1, 1, 4)])
    """

    def __init__(self, slices: list[tuple[str, int, int]]) -> None:
        self.slices = slices
        self.n_tasks = len(slices)
        self.n_outputs = slices[-1][2] if slices else 0
        sizes = [stop - start for _, start, stop in slices]
        self.column_task = np.repeat(np.arange(len(slices)), sizes)

        def single(kind: str) -> tuple[np.ndarray, np.ndarray]:
            picked = [(task, start) for task, (k, start, _) in enumerate(slices) if k == kind]
            return (
                np.array([t for t, _ in picked], dtype=np.intp),
                np.array([c for _, c in picked], dtype=np.intp),
            )

        self.regression = single(REGRESSION)
        self.binary = single(BINARY)
        self.multiclass = [
            (task, start, stop)
            for task, (kind, start, stop) in enumerate(slices)
            if kind == MULTICLASS and stop > start
        ]


class HeadValues(typing.NamedTuple):
    """What `evaluate` computes for rows of head outputs (all float64, NaN-free).

    - `prediction` (rows x outputs): value, P(True) or class probability;
    - `gradient` (rows x outputs): d loss / d z, 0 where the task is unlabelled;
    - `curvature` (rows x outputs): d^2 loss / d z^2 (diagonal), 0 where unlabelled.

    (The losses themselves are those of the mixed predictions: `prediction_losses`.)
    """

    prediction: np.ndarray
    gradient: np.ndarray
    curvature: np.ndarray


def link(columns: HeadColumns, Z: np.ndarray) -> np.ndarray:
    """Predictions (rows x outputs) from raw head outputs Z."""
    P = np.array(Z, dtype=float)
    _, cols = columns.binary
    if len(cols):
        P[:, cols] = 0.5 * (1.0 + np.tanh(0.5 * P[:, cols]))
    for _, start, stop in columns.multiclass:
        block = P[:, start:stop]
        block -= block.max(axis=1, keepdims=True)
        np.exp(block, out=block)
        block /= block.sum(axis=1, keepdims=True)
    return P


def evaluate(
    columns: HeadColumns, Z: np.ndarray, T: np.ndarray, labelled: np.ndarray
) -> HeadValues:
    """Link, loss gradient and curvature of raw outputs Z (rows x outputs) against targets
    T (rows x tasks: a scaled value, 0/1, or a class index); `labelled` (rows x tasks)
    says which targets exist (T may hold anything elsewhere)."""
    P = link(columns, Z)
    G = np.zeros(P.shape)
    H = np.zeros(P.shape)
    tasks, cols = columns.regression
    if len(tasks):
        mask = labelled[:, tasks]
        diff = np.where(mask, P[:, cols] - T[:, tasks], 0.0)
        G[:, cols] = diff
        H[:, cols] = mask
    tasks, cols = columns.binary
    if len(tasks):
        mask = labelled[:, tasks]
        t = np.where(mask, T[:, tasks], 0.0)
        p = P[:, cols]
        G[:, cols] = np.where(mask, p - t, 0.0)
        H[:, cols] = np.where(mask, p * (1.0 - p), 0.0)
    for task, start, stop in columns.multiclass:
        mask = labelled[:, task]
        rows = np.flatnonzero(mask)
        if not len(rows):
            continue
        classes = T[rows, task].astype(np.intp)
        p = P[rows, start:stop]
        grad = p.copy()
        grad[np.arange(len(rows)), classes] -= 1.0
        G[rows, start:stop] = grad
        H[rows, start:stop] = p * (1.0 - p)
    return HeadValues(P, G, H)


def mixture_gradient(
    columns: HeadColumns, P: np.ndarray, mixed: np.ndarray, T: np.ndarray, labelled: np.ndarray
) -> np.ndarray:
    """d loss(mixed) / d alpha[k, d] summed over rows (tasks x depths), where
    mixed = sum_d alpha[k, d] P[d] is a mixture of the heads' predictions P
    (depths x rows x outputs) and the loss is `prediction_losses`'."""
    depths = P.shape[0]
    out = np.zeros((columns.n_tasks, depths))
    tasks, cols = columns.regression
    if len(tasks):
        residual = np.where(labelled[:, tasks], mixed[:, cols] - T[:, tasks], 0.0)
        out[tasks] = np.einsum("nk,dnk->kd", residual, P[:, :, cols])
    tasks, cols = columns.binary
    if len(tasks):
        p = np.clip(mixed[:, cols], _TINY, 1.0 - _TINY)
        t = T[:, tasks]
        slope = np.where(labelled[:, tasks], (p - t) / (p * (1.0 - p)), 0.0)  # d loss / d p
        out[tasks] = np.einsum("nk,dnk->kd", slope, P[:, :, cols])
    for task, start, stop in columns.multiclass:
        rows = np.flatnonzero(labelled[:, task])
        if len(rows):
            classes = T[rows, task].astype(np.intp)
            picked = P[:, rows, start:stop][:, np.arange(len(rows)), classes]  # depths x rows
            p = np.maximum(mixed[rows, start:stop][np.arange(len(rows)), classes], _TINY)
            out[task] = -(picked / p).sum(axis=1)
    return out


def prediction_losses(
    columns: HeadColumns, P: np.ndarray, T: np.ndarray, labelled: np.ndarray
) -> np.ndarray:
    """Each task's loss (rows x tasks, 0 where unlabelled) of predictions P - values and
    probabilities, as `link` gives them, or a mixture of such."""
    L = np.zeros(T.shape)
    tasks, cols = columns.regression
    if len(tasks):
        diff = np.where(labelled[:, tasks], P[:, cols] - T[:, tasks], 0.0)
        L[:, tasks] = 0.5 * diff * diff
    tasks, cols = columns.binary
    if len(tasks):
        p = np.clip(P[:, cols], _TINY, 1.0 - _TINY)
        t = np.where(labelled[:, tasks], T[:, tasks], 0.0)
        loss = -(t * np.log(p) + (1.0 - t) * np.log1p(-p))
        L[:, tasks] = np.where(labelled[:, tasks], loss, 0.0)
    for task, start, stop in columns.multiclass:
        rows = np.flatnonzero(labelled[:, task])
        if len(rows):
            p = P[rows, start:stop][np.arange(len(rows)), T[rows, task].astype(np.intp)]
            L[rows, task] = -np.log(np.maximum(p, _TINY))
    return L
