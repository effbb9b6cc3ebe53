"""Decision thresholds for binary tasks, tuned online so that rare positives get predicted.

A calibrated model of a label that is positive 5% of the time rarely gives any row a
probability above 0.5, so thresholding at 0.5 predicts no positive at all: accuracy
is the majority rate and F1 is 0. `OnlineThreshold` keeps exponentially decayed
histograms of recent predicted probabilities (on a logit grid) for positive and
negative rows, and decides with the threshold that would have maximised F1 on them
(`rule="f1"`), or with the recent positive rate (`rule="prior"`: predict True when a
row is more likely positive than the average row). Probabilities are not changed:
only the decision is.

Lipton, Elkan & Naryanaswamy (2014), "Thresholding classifiers to maximize F1 score"
show that the F1-optimal threshold of a calibrated classifier is half the F1 it
reaches, far below 0.5 for rare labels.
"""

from __future__ import annotations

import numpy as np

from stream_mtl.exceptions import InvalidInput

# Bin edges on the logit scale: bin b holds logits in (EDGES[b-1], EDGES[b]].
EDGES = np.linspace(-9.0, 9.0, 73)
_CUT_PROBABILITIES = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-EDGES)), [1.0]])
RULES = ("f1", "prior")


class OnlineThreshold:
    """The decision threshold of one binary task, from its recent predictions.

    Until `min_each` positive and negative rows have been seen, it is 0.5.

    >>> rng = np.random.default_rng(0)
    >>> tuner = OnlineThreshold("f1")
    >>> labels = rng.random(5000) < 0.05  # 5% positives
    >>> probabilities = np.where(labels, rng.beta(3, 8, 5000), rng.beta(1, 20, 5000))
    >>> tuner.update(probabilities, labels)
    >>> round(tuner.threshold, 2)
    0.18
    >>> prior = OnlineThreshold("prior")
    >>> prior.update(probabilities, labels)
    >>> round(prior.threshold, 3)
    0.05
    """

    def __init__(self, rule: str = "f1", window: int = 2000, min_each: int = 5) -> None:
        if rule not in RULES:
            raise InvalidInput(f"unknown threshold rule {rule!r}; expected one of {RULES}")
        self.rule = rule
        self.decay = 1.0 - 1.0 / window
        self.min_each = min_each
        self.counts = np.zeros((2, len(EDGES) + 1))  # row 0: negatives, row 1: positives
        self.seen = np.zeros(2)
        self._threshold: float | None = 0.5

    def update(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        """Take the probabilities predicted for rows (before learning them) and their labels."""
        probabilities = np.clip(np.asarray(probabilities, float), 1e-12, 1.0 - 1e-12)
        labels = np.asarray(labels, bool)
        logits = np.log(probabilities) - np.log1p(-probabilities)
        bins = np.searchsorted(EDGES, logits)
        self.counts *= self.decay ** len(labels)
        for row in (0, 1):
            picked = bins[labels == bool(row)]
            self.counts[row] += np.bincount(picked, minlength=self.counts.shape[1])
            self.seen[row] += len(picked)
        self._threshold = None

    @property
    def threshold(self) -> float:
        """Predict True where P(True) is above this."""
        if self._threshold is None:
            self._threshold = self._best()
        return self._threshold

    def _best(self) -> float:
        if self.seen.min() < self.min_each:
            return 0.5
        negatives, positives = self.counts
        if self.rule == "prior":
            return float(positives.sum() / self.counts.sum())
        # Cut c predicts True for bins >= c: true and false positives are tail sums.
        tp = np.concatenate([np.cumsum(positives[::-1])[::-1], [0.0]])
        fp = np.concatenate([np.cumsum(negatives[::-1])[::-1], [0.0]])
        f1 = 2.0 * tp / np.maximum(tp + fp + positives.sum(), 1e-12)
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the highest of equal cuts
        return float(_CUT_PROBABILITIES[best])

    def state(self) -> np.ndarray:
        return np.concatenate([self.counts.ravel(), self.seen])

    def load_state(self, array: np.ndarray) -> None:
        n = self.counts.size
        self.counts = np.asarray(array[:n], float).reshape(self.counts.shape)
        self.seen = np.asarray(array[n:], float)
        self._threshold = None
