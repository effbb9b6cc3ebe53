"""Predicting: the read-only face of a learner, and `Snapshot`, a copy of it frozen in time.

A learner predicts with three parts: its feature encoder (the input side), its backend's
parameters, and its `Outputs` (the output side). `Predicting` is what those three give,
for `MultiTaskLearner` and `Snapshot` alike. A `Snapshot` is a private copy of the three,
taken at one moment, with the learner's counts and weights of that moment: what a live
service predicts from while the learner goes on (see `stream_mtl.service`). It has no
`learn_one` and no `save`: it never changes.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping

import numpy as np
import pandas as pd

from stream_mtl.tasks import BINARY, REGRESSION, Label

if typing.TYPE_CHECKING:
    from stream_mtl.features import FeatureEncoder
    from stream_mtl.learner import DriftEvent, MultiTaskLearner
    from stream_mtl.outputs import Outputs


class Predicting:
    """Checks and predictions from an encoder, a backend and the output side."""

    _encoder: FeatureEncoder
    _backend: typing.Any
    _outputs: Outputs

    @property
    def thresholds(self) -> dict[str, float]:
        """Each binary task's decision threshold on P(True) as of now."""
        return {
            name: self._outputs.threshold(position)
            for position, (name, task) in enumerate(zip(self._outputs.names, self._outputs.tasks))
            if task.kind == BINARY
        }

    @property
    def classes(self) -> dict[str, list[Label]]:
        """The classes each multiclass task has seen, in order of first appearance."""
        return {name: list(labels) for name, labels in self._outputs.classes.items()}

    def check_labels(self, y: object) -> dict[str, Label]:
        """The labels of `y` in canonical form (missing ones left out), checked as
        `learn_one` checks them; raises an `InvalidInput` naming the fault.

        >>> from stream_mtl import MultiTaskLearner, Regression, Binary
        >>> model = MultiTaskLearner(tasks={"price": Regression(), "churn": Binary()})
        >>> model.check_labels({"price": 3, "churn": 1})
        {'price': 3.0, 'churn': True}
        """
        return self._outputs.canonical_labels(y)

    def check_one(self, x: dict | None, y: dict | None = None) -> None:
        """Raise the error `learn_one(x, y)` would raise, naming the fault; change nothing.

        A stream consumer uses it to set a bad record aside before batching the rest.
        `x=None` checks labels alone (a late label), `y=None` features alone.

        >>> from stream_mtl import MultiTaskLearner, Regression
        >>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,))
        >>> model.check_one({"age": float("nan")}, {"price": 1.0})
        Traceback (most recent call last):
        ...
        stream_mtl.exceptions.InvalidInput: feature 'age' is NaN; features must be finite numbers
        >>> model.check_one({"age": 3}, {"margin": 1.0})
        Traceback (most recent call last):
        ...
        stream_mtl.exceptions.InvalidInput: unknown task 'margin'; this model's tasks are ['price']
        """
        if y is not None:
            self._outputs.check_labels(y)
        if x is not None:
            self._encoder.check_one(x)

    def predict_one(self, x: dict) -> dict[str, Label | None]:
        """Each task's prediction for `x`: a number, a bool or a class (None before any class).

        A binary task predicts True where P(True) is above its threshold (see `Binary`).
        """
        return self._outputs.decode_one(
            self._backend.forward_one(self._encoder.transform_one(x)).tolist()
        )

    def predict_proba_one(self, x: dict) -> dict[str, dict[Label, float]]:
        """Class probabilities of each classification task for `x`."""
        outputs = self._backend.forward_one(self._encoder.transform_one(x))
        return self._outputs.probabilities(outputs[None, :])[0]

    def check_many(
        self, X: pd.DataFrame | np.ndarray | None, Y: pd.DataFrame | Mapping | None = None
    ) -> None:
        """Raise the error `learn_many(X, Y)` would raise, naming the fault; change nothing.

        Either may be None: a stream consumer checks a poll's features and labels at once
        before it falls back to checking record by record.

        >>> import pandas as pd
        >>> from stream_mtl import MultiTaskLearner, Regression
        >>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,))
        >>> model.check_many(pd.DataFrame({"age": [1.0, 2.0]}), pd.DataFrame({"price": [1, "x"]}))
        Traceback (most recent call last):
        ...
        stream_mtl.exceptions.InvalidInputType: label 'x' for regression task 'price' ... (row 1)
        """
        if Y is not None:
            self._outputs.check_label_frame(Y, len(X) if X is not None else len(Y))
        if X is not None:
            self._encoder.check_frame(X)

    def predict_many(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Predictions for each row of `X`: a DataFrame with one column per task."""
        outputs = self._backend.forward_many(self._encoder.transform_many(X))
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(self._outputs.decode(outputs), index=index, columns=self._outputs.names)

    def predict_proba_many(self, X: pd.DataFrame | np.ndarray) -> dict[str, pd.DataFrame]:
        """Class probabilities for each row of `X`: a DataFrame per classification task."""
        outputs = self._backend.forward_many(self._encoder.transform_many(X))
        index = X.index if isinstance(X, pd.DataFrame) else None
        rows = self._outputs.probabilities(outputs)
        return {
            name: pd.DataFrame([row[name] for row in rows], index=index)
            for name, task in zip(self._outputs.names, self._outputs.tasks)
            if task.kind != REGRESSION
        }


class Snapshot(Predicting):
    """A read-only copy of a learner's predicting parts and its counts, taken at one moment.

    >>> from stream_mtl import MultiTaskLearner, Regression
    >>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=(4,), seed=0)
    >>> model.learn_one({"size": 1.0}, {"price": 2.0})
    >>> snapshot = Snapshot(model)
    >>> model.learn_one({"size": 2.0}, {"price": 4.0})
    >>> snapshot.n_learned, model.n_learned
    ({'price': 1}, {'price': 2})
    >>> snapshot.predict_one({"size": 1.0}) == model.predict_one({"size": 1.0})
    False
    """

    # What predicts; the rest is what it reports (`stream_mtl.snapshot_wire` sends the
    # two apart).
    PARTS = ("_encoder", "_backend", "_outputs")

    def __init__(self, model: MultiTaskLearner) -> None:
        self._encoder = copy.deepcopy(model._encoder)
        self._backend = model._backend.predicting_copy()
        self._outputs = model._outputs.frozen_copy()
        self.tasks: dict = dict(model.tasks)
        self.n_learned: dict[str, int] = model.n_learned
        self.task_weights: dict[str, float] = model.task_weights
        self.mixture: dict[str, dict[str, float]] = model.mixture
        self._affinity = np.array(model._affinity.matrix)  # a table on demand: see below
        self.drift_events: tuple[DriftEvent, ...] = tuple(model.drift_events)

    @property
    def task_affinity(self) -> pd.DataFrame:
        """The learner's `task_affinity` when the snapshot was taken. Kept as an array and
        made a table when asked for: a live service loads a snapshot tens of times a
        second, and a DataFrame takes longer to unpickle than the rest of the model."""
        names = list(self.tasks)
        return pd.DataFrame(self._affinity, index=names, columns=names)
