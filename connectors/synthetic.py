"""Seeded multi-task streams whose tasks share a latent, non-linear structure.

Every task's target is a mix of the same latent factors (saturating projections of
the features and their pairwise products, which no linear model captures) plus a
smaller part of its own. A model that shares what it learns across tasks should
therefore learn each task faster than one model per task.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stream_mtl.observation import Observation
from stream_mtl.tasks import BINARY, MULTICLASS, REGRESSION

DEFAULT_TASKS = {
    "a": REGRESSION,
    "b": REGRESSION,
    "c": REGRESSION,
    "flag": BINARY,
}
N_CLASSES = 3


class SyntheticStream:
    """An endless (or `n`-long) stream of `Observation`s for several related tasks.

    Parameters
    ----------
    tasks
        Task name -> kind (`"regression"`, `"binary"` or `"multiclass"`).
    n_features
        Number of numeric features, named `x0`, `x1`, ...
    n_latent
        Number of shared latent factors.
    label_share
        Share of the tasks labelled in each observation (at least one is): 1.0 labels
        every task, 1/len(tasks) labels exactly one, chosen at random.
    noise
        Standard deviation of the noise on the regression targets' latent score.
    task_specific
        Weight of each task's own part relative to the shared part.
    n
        Number of observations, or None for an endless stream.
    seed
        Seed of the structure and of the draws: the same seed gives the same stream.

    >>> stream = SyntheticStream(n=2, seed=0)
    >>> [sorted(obs.y) for obs in stream]
    [['a', 'b', 'c', 'flag'], ['a', 'b', 'c', 'flag']]
    >>> [len(obs.y) for obs in SyntheticStream(n=5, label_share=0.25, seed=1)]
    [1, 1, 1, 1, 1]
    """

    def __init__(
        self,
        tasks: dict[str, str] | None = None,
        n_features: int = 20,
        n_latent: int = 4,
        label_share: float = 1.0,
        noise: float = 0.1,
        task_specific: float = 0.3,
        n: int | None = None,
        seed: int = 0,
    ) -> None:
        self.tasks = dict(tasks or DEFAULT_TASKS)
        for name, kind in self.tasks.items():
            if kind not in (REGRESSION, BINARY, MULTICLASS):
                raise ValueError(f"task {name!r} has unknown kind {kind!r}")
        if not 0 < label_share <= 1:
            raise ValueError(f"label_share must be in (0, 1], got {label_share}")
        self.n_features = n_features
        self.n_latent = n_latent
        self.label_share = label_share
        self.noise = noise
        self.task_specific = task_specific
        self.n = n
        self.seed = seed

        structure = np.random.default_rng([seed, 0])
        projection = structure.normal(size=(n_latent, n_features))
        self._projection = 1.5 * projection / np.linalg.norm(projection, axis=1, keepdims=True)
        n_shared = 2 * n_latent  # the factors and the products of neighbouring factors
        self._mix = {}
        self._own = {}
        self._offset = {}
        for name, kind in self.tasks.items():
            outputs = N_CLASSES if kind == MULTICLASS else 1
            mix = structure.normal(size=(outputs, n_shared))
            self._mix[name] = mix / np.linalg.norm(mix, axis=1, keepdims=True) * 2.0
            own = structure.normal(size=(outputs, n_features))
            self._own[name] = own / np.linalg.norm(own, axis=1, keepdims=True)
            self._offset[name] = (structure.uniform(10, 100), structure.uniform(2, 20))

    def shared_factors(self, X: np.ndarray) -> np.ndarray:
        """The latent factors every task draws on, for feature rows `X`."""
        latent = np.tanh(X @ self._projection.T)
        products = latent * np.roll(latent, -1, axis=1) * 2.0
        return np.concatenate([latent, products], axis=1)

    def scores(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Each task's noise-free score (before the link) for feature rows `X`."""
        shared = self.shared_factors(X)
        return {
            name: shared @ self._mix[name].T
            + self.task_specific * np.tanh(X @ self._own[name].T * 1.5)
            for name in self.tasks
        }

    def __iter__(self) -> Iterator[Observation]:
        rng = np.random.default_rng([self.seed, 1])
        names = list(self.tasks)
        n_labelled = max(1, round(self.label_share * len(names)))
        produced = 0
        while self.n is None or produced < self.n:
            block = 256 if self.n is None else min(256, self.n - produced)
            X = rng.normal(size=(block, self.n_features))
            scores = self.scores(X)
            labels = {}
            for name, kind in self.tasks.items():
                score = scores[name]
                if kind == REGRESSION:
                    mean, scale = self._offset[name]
                    noisy = score[:, 0] + self.noise * rng.normal(size=block)
                    labels[name] = (mean + scale * noisy).tolist()
                elif kind == BINARY:
                    p = 1.0 / (1.0 + np.exp(-3.0 * score[:, 0]))
                    labels[name] = (rng.random(block) < p).tolist()
                else:
                    noisy = 3.0 * score + rng.gumbel(size=score.shape)
                    labels[name] = ["abc"[i] for i in noisy.argmax(axis=1)]
            for row in range(block):
                if n_labelled == len(names):
                    chosen = names
                else:
                    chosen = [names[i] for i in rng.choice(len(names), n_labelled, replace=False)]
                x = {f"x{j}": float(v) for j, v in enumerate(X[row])}
                yield Observation(x, {name: labels[name][row] for name in chosen})
            produced += block
