"""Reference predictors that every evaluation reports beside the model."""

from __future__ import annotations

import collections

from stream_mtl.tasks import REGRESSION, Label, Task


class MeanPredictor:
    """Predicts each task's running mean (regression) or most frequent class so far.

    The floor any learner must clear: it uses the labels and nothing of the features.

    >>> from stream_mtl import Regression, Binary
    >>> baseline = MeanPredictor({"price": Regression(), "churn": Binary()})
    >>> baseline.learn_one({}, {"price": 2.0, "churn": True})
    >>> baseline.learn_one({}, {"price": 4.0})
    >>> baseline.predict_one({})
    {'price': 3.0, 'churn': True}
    >>> baseline.predict_proba_one({})
    {'churn': {True: 1.0}}
    """

    def __init__(self, tasks: dict[str, Task]) -> None:
        self.tasks = dict(tasks)
        self._sums = dict.fromkeys(tasks, 0.0)
        self._counts: dict[str, collections.Counter] = {
            name: collections.Counter() for name in tasks
        }

    def learn_one(self, x: dict, y: dict) -> None:
        for name, label in y.items():
            label = self.tasks[name].check_label(name, label)
            if label is None:
                continue
            if self.tasks[name].kind == REGRESSION:
                self._sums[name] += label
                self._counts[name]["n"] += 1
            else:
                self._counts[name][label] += 1

    def predict_one(self, x: dict) -> dict[str, Label | None]:
        prediction: dict[str, Label | None] = {}
        for name, task in self.tasks.items():
            counts = self._counts[name]
            if task.kind == REGRESSION:
                prediction[name] = self._sums[name] / counts["n"] if counts["n"] else 0.0
            else:
                prediction[name] = counts.most_common(1)[0][0] if counts else None
        return prediction

    def predict_proba_one(self, x: dict) -> dict[str, dict[Label, float]]:
        """Each classification task's class frequencies so far."""
        proba: dict[str, dict[Label, float]] = {}
        for name, task in self.tasks.items():
            if task.kind != REGRESSION:
                counts = self._counts[name]
                total = sum(counts.values())
                proba[name] = {label: n / total for label, n in counts.items()} if total else {}
        return proba
