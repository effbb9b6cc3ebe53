"""River's data sets and stream generators as observation streams.

A single-target data set becomes a one-task stream (the task named `task`, its kind
taken from the data set's `task`); a multi-output one becomes a stream with one task per
output. Generators (`river.datasets.synth`) are endless: give `n` to take that many.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from river.datasets import base as river_base

from stream_mtl.observation import Observation
from stream_mtl.tasks import BINARY, MULTICLASS, REGRESSION

KINDS = {
    river_base.REG: REGRESSION,
    river_base.BINARY_CLF: BINARY,
    river_base.MULTI_CLF: MULTICLASS,
    river_base.MO_REG: REGRESSION,
    river_base.MO_BINARY_CLF: BINARY,
}


class RiverSource:
    """Observations from a River data set or generator.

    >>> from river import datasets
    >>> source = RiverSource(datasets.TrumpApproval(), task="approval")
    >>> source.tasks, len(source)
    ({'approval': 'regression'}, 1001)
    >>> next(iter(source)).y
    {'approval': 43.75505}

    >>> from river.datasets import synth
    >>> source = RiverSource(synth.Agrawal(seed=1), n=3)
    >>> source.tasks, [obs.y for obs in source]
    ({'y': 'binary'}, [{'y': True}, {'y': False}, {'y': True}])
    """

    def __init__(self, dataset: river_base.Dataset, task: str = "y", n: int | None = None) -> None:
        kind = KINDS.get(getattr(dataset, "task", None))
        if kind is None:
            raise ValueError(
                f"{type(dataset).__name__} is a {getattr(dataset, 'task', 'non-River')!r} "
                f"data set; expected one of {sorted(KINDS)}"
            )
        if n is None and getattr(dataset, "n_samples", None) is None:
            raise ValueError(f"{type(dataset).__name__} is endless: give n, how many to take")
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        self.dataset = dataset
        self.task = task
        self.n = n
        self.kind = kind
        self.multi_output = dataset.task in (river_base.MO_REG, river_base.MO_BINARY_CLF)

    def __repr__(self) -> str:
        return f"RiverSource({type(self.dataset).__name__}, n={len(self)})"

    def __len__(self) -> int:
        return self.n if self.n is not None else self.dataset.n_samples

    @property
    def tasks(self) -> dict[str, str]:
        """Task name -> kind, for building a `MultiTaskLearner` for this stream."""
        if not self.multi_output:
            return {self.task: self.kind}
        _, y = next(iter(self.dataset))
        return dict.fromkeys(y, self.kind)

    def __iter__(self) -> Iterator[Observation]:
        rows = iter(self.dataset)
        if self.n is not None:
            rows = itertools.islice(rows, self.n)
        binary = self.kind == BINARY
        for x, y in rows:
            labels = dict(y) if self.multi_output else {self.task: y}
            if binary:  # River's generators label with 0/1; the task's canonical form is bool
                labels = {name: bool(label) for name, label in labels.items()}
            yield Observation(x, labels)
