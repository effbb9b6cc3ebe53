"""Equal weighting: every task's loss counts the same, always."""

from __future__ import annotations

from stream_mtl.weighting.base import WeightingStrategy


class Equal(WeightingStrategy):
    """Every task gets weight 1: the plain sum of task losses.

    >>> strategy = Equal()
    >>> strategy.add_task("price"); strategy.add_task("churn")
    >>> strategy.step_weights().loss.tolist()
    [1.0, 1.0]
    """

    def _update(
        self, losses: list[float], labelled: list[int], grad_norms: list[float]
    ) -> list[tuple[int, str]]:
        return []  # nothing to track: the weights never change
