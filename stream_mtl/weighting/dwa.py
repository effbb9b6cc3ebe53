"""Dynamic Weight Average, rewritten for streams."""

from __future__ import annotations

import typing

from stream_mtl.exceptions import InvalidInput
from stream_mtl.weighting.base import WeightingStrategy, softmax_times_count


class DWA(WeightingStrategy):
    """Dynamic Weight Average: more weight to tasks whose loss is falling slowest.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.
    The paper weights task k by K * softmax(r_k / T) with r_k = L_k(t-1) / L_k(t-2), the
    ratio of its last two epochs' losses. A stream has no epochs: here r_k is the ratio
    of a recent running loss (an exponential average with rate `fast`) to an older one
    (rate `slow`). A task whose loss is still rising (r > 1) gets more weight, one that
    is learning well (r < 1) less. Tasks with fewer than `warmup` labels have r = 1.
    Only labelled steps feed a task's averages.

    Parameters
    ----------
    temperature
        T: the higher, the more even the weights (the paper uses 2).
    fast
        Rate of the recent running loss (about 1/labels it remembers).
    slow
        Rate of the older running loss.
    warmup
        Labels a task needs before its ratio counts.

    >>> import numpy as np
    >>> dwa = DWA(warmup=5)
    >>> dwa.add_task("falling"); dwa.add_task("rising")
    >>> for t in range(200):
    ...     losses = np.array([1.0 / (1 + t), 0.01 * t])
    ...     _ = dwa.update(losses, np.array([True, True]), step=t + 1)
    >>> weights = dwa.step_weights().loss
    >>> bool(weights[1] > 1.0 > weights[0]), round(float(weights.sum()), 6)
    (True, 2.0)
    """

    _per_task: typing.ClassVar[dict[str, float]] = {"_recent": 0.0, "_older": 0.0, "_seen": 0.0}

    def __init__(
        self, temperature: float = 2.0, fast: float = 0.05, slow: float = 0.005, warmup: int = 50
    ) -> None:
        if temperature <= 0:
            raise InvalidInput(f"temperature must be positive, got {temperature}")
        if not 0 < slow < fast <= 1:
            raise InvalidInput(f"need 0 < slow < fast <= 1, got slow={slow}, fast={fast}")
        super().__init__()
        self.temperature = temperature
        self.fast = fast
        self.slow = slow
        self.warmup = warmup

    def _observe(self, losses: list[float], labelled: list[int], grad_norms: list[float]) -> None:
        recent, older, seen = self._recent, self._older, self._seen
        for k in labelled:
            n = seen[k] = seen[k] + 1.0
            loss = losses[k]
            recent[k] += max(self.fast, 1.0 / n) * (loss - recent[k])
            older[k] += max(self.slow, 1.0 / n) * (loss - older[k])

    def _loss_weights(self) -> list[float]:
        scores = [
            (recent / older if seen >= self.warmup and older > 0 else 1.0) / self.temperature
            for recent, older, seen in zip(self._recent, self._older, self._seen)
        ]
        return softmax_times_count(scores)
