"""Relatedness: auxiliary tasks weighted by a softmax of their affinity to the main tasks."""

from __future__ import annotations

import math
import typing

import numpy as np

from stream_mtl.exceptions import InvalidInput
from stream_mtl.weighting.base import WeightingStrategy


class Relatedness(WeightingStrategy):
    """Main tasks at weight 1; each auxiliary task by a softmax of its affinity to them.

    The user names the tasks they care about (`main`); every other task is an auxiliary,
    learned for what it can teach the shared trunk. An auxiliary's relatedness r_k is
    its mean affinity to the main tasks as the model measures it (`task_affinity`: the
    overlap of the input directions the tasks' predictions move with, in [0, 1], see
    `affinity.TaskAffinity`). The auxiliaries' weights are softmax(r / temperature)
    scaled so that the most related auxiliary counts as much as a main task (weight 1):
    w_k = exp((r_k - max_j r_j) / temperature). One whose predictions rest on the
    structure the main tasks rest on is kept, one that rests on other structure - which
    would spend the trunk's capacity and gradient on it - fades out. (Scaled to sum to
    the number of auxiliaries instead, the most related one outweighed the main task
    threefold and the main task's error rose, in `benchmarks/sharing.py`.) Weighting auxiliary tasks
    by a softmax of relevance scores follows Liu, Davison & Johns, "Self-Supervised
    Generalisation with Meta Auxiliary Learning" (NeurIPS 2019), and the choice of
    auxiliaries by relatedness Standley, Zamir, Chen, Guibas, Malik & Savarese, "Which
    Tasks Should Be Learned Together in Multi-task Learning?" (ICML 2020).

    Why the affinity and not the cosine of the tasks' loss gradients (Du et al.,
    "Adapting Auxiliary Losses Using Gradient Similarity", 2018): with a head per task,
    two tasks built on the same latent factors with different mixes have gradients at
    the trunk that average to a cosine of 0, and a task whose target is another's
    negated has a cosine near 1, though its head absorbs the sign and it helps the trunk
    as much as a copy would (measured in `benchmarks/sharing.py`). The affinity tells the
    structure apart; the gradients' sign does not.

    It composes with `DriftAware`: `DriftAware(Relatedness(main=[...]))`. The weights
    change when the learner re-measures the affinity (one labelled observation in 16).

    Parameters
    ----------
    main
        The tasks to serve; at least one.
    temperature
        Of the softmax: the lower, the more the weight goes to the most related
        auxiliaries (affinities lie in [0, 1]).

    >>> strategy = Relatedness(main=["price"])
    >>> for task in ("price", "demand", "weather", "noise"):
    ...     strategy.add_task(task)
    >>> affinity = np.array([
    ...     [1.0, 0.7, 0.3, 0.1],
    ...     [0.7, 1.0, 0.2, 0.1],
    ...     [0.3, 0.2, 1.0, np.nan],
    ...     [0.1, 0.1, np.nan, 1.0],
    ... ])
    >>> strategy.observe_affinity(affinity)
    >>> strategy.relatedness
    [1.0, 0.7, 0.3, 0.1]
    >>> [round(w, 3) for w in strategy.step_weights().loss.tolist()]
    [1.0, 1.0, 0.018, 0.002]
    """

    _per_task: typing.ClassVar[dict[str, float]] = {"_relatedness": 0.0}
    needs_affinity = True

    def __init__(self, main: typing.Sequence[str] = (), temperature: float = 0.1) -> None:
        if isinstance(main, str) or not main or not all(isinstance(t, str) for t in main):
            raise InvalidInput(f"main must be a non-empty list of task names, got {main!r}")
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise InvalidInput(f"temperature must be a positive number, got {temperature!r}")
        super().__init__()
        self.main = list(main)
        self.temperature = temperature

    @property
    def relatedness(self) -> list[float]:
        """Each task's affinity to the main tasks, as last measured (1 for a main task,
        0 for an auxiliary not yet measured)."""
        main = set(self.main)
        return [1.0 if t in main else r for t, r in zip(self.tasks, self._relatedness)]

    def observe_affinity(self, matrix: np.ndarray) -> None:
        main = set(self.main)
        mains = [k for k, task in enumerate(self.tasks) if task in main]
        for k, task in enumerate(self.tasks):
            if task in main or not mains:
                continue
            known = [float(matrix[k, m]) for m in mains if math.isfinite(matrix[k, m])]
            if known:
                self._relatedness[k] = sum(known) / len(known)
        self._refresh()

    def _loss_weights(self) -> list[float]:
        main = set(self.main)
        auxiliaries = [k for k, task in enumerate(self.tasks) if task not in main]
        weights = [1.0] * len(self.tasks)
        top = max((self._relatedness[k] for k in auxiliaries), default=0.0)
        for k in auxiliaries:
            weights[k] = math.exp((self._relatedness[k] - top) / self.temperature)
        return weights
