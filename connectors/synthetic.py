"""Seeded multi-task streams whose tasks share a latent, non-linear structure, and drift.

Every task's target is a mix of the same latent factors (saturating projections of
the features and their pairwise products, which no linear model captures) plus a
smaller part of its own. A model that shares what it learns across tasks should
therefore learn each task faster than one model per task.

Tasks need not all be related: `relations` makes a task "unrelated" (its shared part
draws on latent factors of its own, from another projection of the features) or
"conflicting" (its shared part is the first related task's, negated: the negated
shared factors, mixed as that task mixes them).

A drift schedule changes chosen tasks' concepts at chosen steps: the task draws a
new mix of the shared factors and a new part of its own, abruptly or gradually (over
`width` observations, each drawn from the new concept with a probability that rises
linearly, as MOA's concept-drift streams do). The true drift points are known.
"""

from __future__ import annotations

import typing
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
RELATIONS = ("related", "unrelated", "conflicting")


class Drift(typing.NamedTuple):
    """A change of task `task`'s concept at observation `at` (0-based), over `width`
    observations (0: abrupt). The task draws a new mix of the shared factors and, unless
    `shared_only`, a new part of its own as well (which the shared trunk must learn)."""

    task: str
    at: int
    width: int = 0
    shared_only: bool = False


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
    drifts
        `Drift(task, at, width)`s: the concept changes, exposed again as `drift_points`.
    relations
        Task name -> `"related"` (the default for a task not named), `"unrelated"` or
        `"conflicting"` (see above); a conflicting task needs a related one before it,
        of the same number of outputs.
    n
        Number of observations, or None for an endless stream.
    seed
        Seed of the structure and of the draws: the same seed gives the same stream.

    >>> stream = SyntheticStream(n=2, seed=0)
    >>> [sorted(obs.y) for obs in stream]
    [['a', 'b', 'c', 'flag'], ['a', 'b', 'c', 'flag']]
    >>> [len(obs.y) for obs in SyntheticStream(n=5, label_share=0.25, seed=1)]
    [1, 1, 1, 1, 1]

    An abrupt drift of task "a" at observation 3: its labels change, the others' do not.

    >>> before = [obs.y for obs in SyntheticStream(n=6, seed=2)]
    >>> drifting = SyntheticStream(n=6, seed=2, drifts=[Drift("a", at=3)])
    >>> after = [obs.y for obs in drifting]
    >>> [round(b["a"], 6) == round(a["a"], 6) for b, a in zip(before, after)]
    [True, True, True, False, False, False]
    >>> all(round(b["b"], 6) == round(a["b"], 6) for b, a in zip(before, after))
    True
    >>> drifting.drift_points
    [Drift(task='a', at=3, width=0, shared_only=False)]

    A conflicting task's shared part is the first task's, negated:

    >>> tasks = {"main": "regression", "against": "regression"}
    >>> stream = SyntheticStream(tasks, relations={"against": "conflicting"}, task_specific=0.0)
    >>> scores = stream.scores(np.ones((1, 20)))
    >>> bool(np.allclose(scores["against"], -scores["main"]))
    True
    """

    def __init__(
        self,
        tasks: dict[str, str] | None = None,
        n_features: int = 20,
        n_latent: int = 4,
        label_share: float = 1.0,
        noise: float = 0.1,
        task_specific: float = 0.3,
        drifts: typing.Sequence[Drift] = (),
        n: int | None = None,
        seed: int = 0,
        relations: dict[str, str] | None = None,
    ) -> None:
        self.tasks = dict(tasks or DEFAULT_TASKS)
        self.relations = {name: "related" for name in self.tasks} | dict(relations or {})
        for name, relation in self.relations.items():
            if name not in self.tasks or relation not in RELATIONS:
                raise ValueError(
                    f"relation {relation!r} of task {name!r}: need a task of the stream "
                    f"and one of {RELATIONS}"
                )
        for name, kind in self.tasks.items():
            if kind not in (REGRESSION, BINARY, MULTICLASS):
                raise ValueError(f"task {name!r} has unknown kind {kind!r}")
        if not 0 < label_share <= 1:
            raise ValueError(f"label_share must be in (0, 1], got {label_share}")
        drifts = sorted((Drift(*d) for d in drifts), key=lambda d: d.at)
        for drift in drifts:
            if drift.task not in self.tasks:
                raise ValueError(f"drift of unknown task {drift.task!r}; tasks: {list(self.tasks)}")
            if drift.at < 0 or drift.width < 0:
                raise ValueError(f"a drift needs at >= 0 and width >= 0, got {drift}")
        self.n_features = n_features
        self.n_latent = n_latent
        self.label_share = label_share
        self.noise = noise
        self.task_specific = task_specific
        self.drifts = drifts
        self.n = n
        self.seed = seed

        structure = np.random.default_rng([seed, 0])
        self._projection = self._draw_projection(structure)
        n_shared = 2 * n_latent  # the factors and the products of neighbouring factors
        self._offset = {}
        # Per task, its concepts in order: (mix of the shared factors, its own part).
        self._concepts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for name, kind in self.tasks.items():
            self._concepts[name] = [self._draw_concept(structure, kind, n_shared)]
            self._offset[name] = (structure.uniform(10, 100), structure.uniform(2, 20))
        self._own_projection = {}
        related = [name for name in self.tasks if self.relations[name] == "related"]
        own = np.random.default_rng([seed, 4])
        for name, relation in self.relations.items():
            if relation == "unrelated":
                self._own_projection[name] = self._draw_projection(own)
            elif relation == "conflicting":
                first = related[0] if related else None
                if first is None or self._concepts[first][0][0].shape != (
                    self._concepts[name][0][0].shape
                ):
                    raise ValueError(
                        f"conflicting task {name!r} needs a related task with as many outputs"
                    )
                part = self._concepts[name][0][1]
                self._concepts[name][0] = (-self._concepts[first][0][0], part)
        changes = np.random.default_rng([seed, 2])
        for drift in drifts:
            mix, own = self._draw_concept(changes, self.tasks[drift.task], n_shared)
            if drift.shared_only:
                own = self._concepts[drift.task][-1][1]
            self._concepts[drift.task].append((mix, own))

    def _draw_projection(self, rng: np.random.Generator) -> np.ndarray:
        projection = rng.normal(size=(self.n_latent, self.n_features))
        return 1.5 * projection / np.linalg.norm(projection, axis=1, keepdims=True)

    @property
    def drift_points(self) -> list[Drift]:
        """The true drifts, in the order they happen."""
        return list(self.drifts)

    def _draw_concept(
        self, rng: np.random.Generator, kind: str, n_shared: int
    ) -> tuple[np.ndarray, np.ndarray]:
        outputs = N_CLASSES if kind == MULTICLASS else 1
        mix = rng.normal(size=(outputs, n_shared))
        own = rng.normal(size=(outputs, self.n_features))
        return (
            mix / np.linalg.norm(mix, axis=1, keepdims=True) * 2.0,
            own / np.linalg.norm(own, axis=1, keepdims=True),
        )

    def shared_factors(self, X: np.ndarray, projection: np.ndarray | None = None) -> np.ndarray:
        """The latent factors every related task draws on, for feature rows `X` (or those
        of another `projection`)."""
        latent = np.tanh(X @ (self._projection if projection is None else projection).T)
        products = latent * np.roll(latent, -1, axis=1) * 2.0
        return np.concatenate([latent, products], axis=1)

    def scores(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Each task's noise-free score (before the link) for feature rows `X`, under its
        first concept."""
        shared = self.shared_factors(X)
        return {name: self._score(X, shared, name, 0) for name in self.tasks}

    def _score(self, X: np.ndarray, shared: np.ndarray, name: str, concept: int) -> np.ndarray:
        mix, own = self._concepts[name][concept]
        if name in self._own_projection:
            shared = self.shared_factors(X, self._own_projection[name])
        return shared @ mix.T + self.task_specific * np.tanh(X @ own.T * 1.5)

    def _concept_per_row(
        self, rng: np.random.Generator, name: str, first: int, n_rows: int
    ) -> np.ndarray:
        """Which concept of task `name` each of observations first..first+n_rows-1 uses."""
        steps = np.arange(first, first + n_rows)
        concept = np.zeros(n_rows, dtype=int)
        for drift in (d for d in self.drifts if d.task == name):
            if drift.width == 0:
                switched = steps >= drift.at
            else:
                share = np.clip((steps - drift.at + 1) / drift.width, 0.0, 1.0)
                switched = rng.random(n_rows) < share
            concept += switched
        return concept

    def _task_scores(
        self, rng: np.random.Generator, name: str, X: np.ndarray, shared: np.ndarray, first: int
    ) -> np.ndarray:
        """Task `name`'s scores for observations first..first+len(X)-1, drifts included."""
        if len(self._concepts[name]) == 1:
            return self._score(X, shared, name, 0)
        concept = self._concept_per_row(rng, name, first, len(X))
        score = np.zeros((len(X), self._concepts[name][0][0].shape[0]))
        for version in np.unique(concept).tolist():
            rows = concept == version
            score[rows] = self._score(X[rows], shared[rows], name, version)
        return score

    def __repr__(self) -> str:
        drifts = ", ".join(f"{d.task} at {d.at}" for d in self.drifts) or "none"
        return (
            f"SyntheticStream(n={self.n}, tasks={self.tasks}, n_features={self.n_features}, "
            f"label_share={self.label_share}, noise={self.noise}, drifts: {drifts}, "
            f"seed={self.seed})"
        )

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("an endless SyntheticStream (n=None) has no length")
        return self.n

    def __iter__(self) -> Iterator[Observation]:
        rng = np.random.default_rng([self.seed, 1])
        switching = np.random.default_rng([self.seed, 3])  # gradual drifts' draws, apart
        names = list(self.tasks)
        n_labelled = max(1, round(self.label_share * len(names)))
        produced = 0
        while self.n is None or produced < self.n:
            block = 256 if self.n is None else min(256, self.n - produced)
            X = rng.normal(size=(block, self.n_features))
            shared = self.shared_factors(X)
            labels = {}
            for name, kind in self.tasks.items():
                score = self._task_scores(switching, name, X, shared, produced)
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
