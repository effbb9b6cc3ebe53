"""Uncertainty weighting (learned per-task log-variances), rewritten for streams."""

from __future__ import annotations

import math
import typing

from stream_mtl.exceptions import InvalidInput
from stream_mtl.weighting.base import WeightingStrategy

LOG_VARIANCE_BOUND = 10.0


class Uncertainty(WeightingStrategy):
    """Weights from learned per-task noise: noisy or hard tasks count less.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
    Scene Geometry and Semantics", CVPR 2018. Each task k has a learned log-variance
    s_k and the objective is sum_k exp(-s_k) L_k + s_k / 2 (the paper's form for a
    Gaussian likelihood with our loss 0.5 * error^2, and for a softmax likelihood).
    Here s_k takes one SGD step (rate `lr`) on that objective at every step where
    task k is labelled, so it tracks log(2 * running loss). The weights exp(-s_k) are
    reported scaled to average 1, which keeps their ratios but leaves the trunk's
    overall learning rate as the optimiser set it.

    Parameters
    ----------
    lr
        Step size of the log-variances.

    >>> import numpy as np
    >>> strategy = Uncertainty(lr=0.05)
    >>> strategy.add_task("easy"); strategy.add_task("noisy")
    >>> for t in range(2000):
    ...     _ = strategy.update(np.array([0.1, 2.0]), np.array([True, True]), step=t + 1)
    >>> [round(w, 2) for w in strategy.step_weights().loss.tolist()]
    [1.9, 0.1]
    """

    _per_task: typing.ClassVar[dict[str, float]] = {"_log_variance": 0.0}

    def __init__(self, lr: float = 0.01) -> None:
        if lr <= 0:
            raise InvalidInput(f"lr must be positive, got {lr}")
        super().__init__()
        self.lr = lr

    def _observe(self, losses: list[float], labelled: list[int], grad_norms: list[float]) -> None:
        s = self._log_variance
        for k in labelled:
            # d/ds [exp(-s) L + s/2] = 0.5 - exp(-s) L
            step = s[k] - self.lr * (0.5 - math.exp(-s[k]) * losses[k])
            s[k] = min(LOG_VARIANCE_BOUND, max(-LOG_VARIANCE_BOUND, step))

    def _loss_weights(self) -> list[float]:
        raw = [math.exp(-s) for s in self._log_variance]
        if not raw:
            return []
        factor = len(raw) / sum(raw)
        return [w * factor for w in raw]
