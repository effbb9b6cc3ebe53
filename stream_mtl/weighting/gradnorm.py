"""GradNorm, rewritten for streams."""

from __future__ import annotations

import typing

from stream_mtl.exceptions import InvalidInput
from stream_mtl.weighting.base import WeightingStrategy, running_rate

MIN_WEIGHT = 0.05


class GradNorm(WeightingStrategy):
    """Balances the tasks' gradient norms at the shared representation.

    Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018. Task k's weighted
    gradient norm G_k = w_k ||grad L_k|| is pulled towards mean(G) * r_k^alpha, where
    r_k is k's loss relative to its initial loss, divided by the mean of that over the
    tasks: a task that has learned less gets a larger gradient. As in the paper the
    target is held fixed while w takes a step on sum_k |G_k - target_k|, and the
    weights are renormalised to sum to the number of tasks.

    For streams: the norms are taken with respect to the trunk's output (the learner
    gets them in closed form from the step it takes anyway, not by one backward pass
    per task); losses and norms are running averages (rate `rate`) over labelled steps
    only; a task's initial loss is the mean over its first `warmup` labels, and it
    joins the balancing after those. The step on w is scaled by the mean norm, so
    that `lr` does not depend on the scale of the gradients.

    Parameters
    ----------
    alpha
        Strength of the pull towards equal training rates (the paper uses 0.12 to 3).
    lr
        Step size of the weights.
    rate
        Rate of the running losses and norms.
    warmup
        Labels a task needs before it is balanced.

    >>> import numpy as np
    >>> strategy = GradNorm(warmup=10)
    >>> strategy.add_task("big"); strategy.add_task("small")
    >>> for t in range(500):
    ...     _ = strategy.update(
    ...         np.array([1.0, 1.0]), np.array([True, True]), step=t + 1,
    ...         grad_norms=np.array([4.0, 1.0]),
    ...     )
    >>> [round(w, 1) for w in strategy.step_weights().loss.tolist()]
    [0.4, 1.6]
    """

    _per_task: typing.ClassVar[dict[str, float]] = {
        "_weight": 1.0,
        "_initial": 0.0,
        "_loss": 0.0,
        "_norm": 0.0,
        "_seen": 0.0,
    }
    needs_grad_norms = True

    def __init__(
        self, alpha: float = 1.5, lr: float = 0.01, rate: float = 0.01, warmup: int = 50
    ) -> None:
        if alpha < 0 or lr <= 0 or not 0 < rate <= 1:
            raise InvalidInput(f"need alpha >= 0, lr > 0, 0 < rate <= 1; got {alpha}, {lr}, {rate}")
        super().__init__()
        self.alpha = alpha
        self.lr = lr
        self.rate = rate
        self.warmup = warmup

    def _observe(self, losses: list[float], labelled: list[int], grad_norms: list[float]) -> None:
        if not grad_norms:
            raise InvalidInput("GradNorm needs each task's gradient norm at every update")
        for k in labelled:
            self._seen[k] += 1.0
            seen = self._seen[k]
            if seen <= self.warmup:
                self._initial[k] += (losses[k] - self._initial[k]) / seen
            rate = running_rate(self.rate, seen)
            self._loss[k] += rate * (losses[k] - self._loss[k])
            self._norm[k] += rate * (grad_norms[k] - self._norm[k])
        self._balance()

    def _balance(self) -> None:
        ready = [k for k, seen in enumerate(self._seen) if seen >= self.warmup]
        if len(ready) < 2:
            return
        weight, norm = self._weight, self._norm
        ratios = [self._loss[k] / self._initial[k] if self._initial[k] > 0 else 1.0 for k in ready]
        mean_ratio = sum(ratios) / len(ready) or 1.0
        mean_norm = sum(norm[k] for k in ready) / len(ready)
        if mean_norm <= 0:
            return
        mean_weighted = sum(weight[k] * norm[k] for k in ready) / len(ready)
        for k, ratio in zip(ready, ratios):
            target = mean_weighted * (ratio / mean_ratio) ** self.alpha
            error = weight[k] * norm[k] - target
            if error:
                step = self.lr * norm[k] / mean_norm
                weight[k] = max(MIN_WEIGHT, weight[k] - step if error > 0 else weight[k] + step)
        total = sum(weight[k] for k in ready)
        for k in ready:
            weight[k] *= len(ready) / total

    def _loss_weights(self) -> list[float]:
        return list(self._weight)
