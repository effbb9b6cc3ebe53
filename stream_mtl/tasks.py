"""Task kinds: what a head predicts, how its labels are checked, and its default metrics.

A task object is a stateless description (River `Base`, so it clones and prints
like any River parameter). What a task learns - the running target scale of a
regression task, the classes seen by a multiclass task - lives in the learner.
"""

from __future__ import annotations

import math
import numbers
import typing

import numpy as np
from river import base

from stream_mtl.decision import RULES

if typing.TYPE_CHECKING:
    from river import metrics
from stream_mtl.exceptions import InvalidInput, InvalidInputType

Label = float | bool | int | str

REGRESSION = "regression"
BINARY = "binary"
MULTICLASS = "multiclass"


def _is_missing(label: object) -> bool:
    return label is None or (isinstance(label, float | np.floating) and math.isnan(label))


class Task(base.Base):
    """One prediction target of a multi-task model (abstract)."""

    kind: typing.ClassVar[str]

    def check_label(self, task: str, label: object) -> Label | None:
        """Return `label` in canonical form, `None` if it is missing, or raise naming `task`."""
        raise NotImplementedError

    def default_metrics(self) -> list[metrics.base.Metric]:
        """Fresh River metrics suited to this kind of task."""
        raise NotImplementedError

    def check_label_column(self, task: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A column of labels in canonical form, and which rows have one; raises naming `task`.

        This default checks label by label; subclasses vectorise the numeric cases.
        """
        checked = []
        for row, value in enumerate(values):
            try:
                checked.append(self.check_label(task, value))
            except InvalidInput as error:
                raise type(error)(f"{error} (row {row})", reason=error.reason) from None
            except (TypeError, ValueError) as error:  # raised by a conversion, not a check
                raise type(error)(f"{error} (row {row})") from None
        present = np.array([label is not None for label in checked], dtype=bool)
        column = np.empty(len(checked), dtype=object)
        column[:] = checked
        return column, present


class Regression(Task):
    """A real-valued target, learned on an online-standardised scale.

    >>> Regression().check_label("price", 12)
    12.0
    >>> Regression().check_label("price", float("nan")) is None
    True
    >>> [type(m).__name__ for m in Regression().default_metrics()]
    ['MAE', 'RMSE', 'R2']
    """

    kind = REGRESSION

    def check_label(self, task: str, label: object) -> float | None:
        if type(label) is float and math.isfinite(label):  # the common case, checked cheaply
            return label
        if _is_missing(label):
            return None
        if isinstance(label, bool | np.bool_) or not isinstance(label, numbers.Real):
            raise InvalidInputType(
                f"label {label!r} for regression task {task!r} is a {type(label).__name__}; "
                "expected a number",
                reason=f"label of the wrong type for regression task {task!r}",
            )
        try:
            value = float(label)
        except OverflowError:
            raise InvalidInput(
                f"label for regression task {task!r} is an integer too large for a float "
                "(over 1.8e308)",
                reason=f"infinite label for regression task {task!r}",
            ) from None
        if math.isinf(value):
            raise InvalidInput(
                f"label {label!r} for regression task {task!r} is infinite",
                reason=f"infinite label for regression task {task!r}",
            )
        return value

    def default_metrics(self) -> list[metrics.base.Metric]:
        from river import metrics

        return [metrics.MAE(), metrics.RMSE(), metrics.R2()]

    def check_label_column(self, task: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if values.dtype.kind not in "fiu":
            column, present = super().check_label_column(task, values)
            return np.where(present, column, np.nan).astype(float), present
        column = values.astype(float)
        infinite = np.isinf(column)
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise InvalidInput(
                f"label {column[row]!r} for regression task {task!r} is infinite (row {row})",
                reason=f"infinite label for regression task {task!r}",
            )
        return column, ~np.isnan(column)


class Binary(Task):
    """A yes/no target: labels are `True`/`False` (or 0/1); predictions are `bool`.

    Parameters
    ----------
    threshold
        How `predict_one` turns P(True) into a decision: `"f1"` (the default) predicts
        True above the threshold that maximised F1 over the task's recent predictions,
        so a rare label is still predicted (with few positives of its own, a task borrows
        the pooled predictions of the other F1-tuned tasks as a prior: see
        `decision.PooledPrior`); `"prior"` above the recent share of
        positives; a number in (0, 1) above that number. Probabilities are the same
        whatever the rule (see `stream_mtl.decision`).

    >>> Binary().check_label("churn", 1)
    True
    >>> Binary().check_label("churn", "yes")
    Traceback (most recent call last):
    ...
    stream_mtl.exceptions.InvalidInputType: label 'yes' for binary task 'churn' is a str; ...
    """

    kind = BINARY

    def __init__(self, threshold: str | float = "f1") -> None:
        if isinstance(threshold, str):
            if threshold not in RULES:
                raise InvalidInput(
                    f"unknown threshold {threshold!r}; expected 'f1', 'prior' or a number"
                )
        elif isinstance(threshold, bool) or not (
            isinstance(threshold, numbers.Real) and 0.0 < threshold < 1.0
        ):
            raise InvalidInput(f"threshold must be 'f1', 'prior' or in (0, 1), got {threshold!r}")
        self.threshold = threshold

    def check_label(self, task: str, label: object) -> bool | None:
        if type(label) is bool:  # the common case, checked cheaply
            return label
        if _is_missing(label):
            return None
        if isinstance(label, bool | np.bool_):
            return bool(label)
        if isinstance(label, numbers.Real):
            if label in (0, 1):
                return bool(label)
            raise InvalidInput(
                f"label {label!r} for binary task {task!r} is neither 0 nor 1; "
                "expected True/False or 0/1",
                reason=f"label neither 0 nor 1 for binary task {task!r}",
            )
        raise InvalidInputType(
            f"label {label!r} for binary task {task!r} is a {type(label).__name__}; "
            "expected True/False or 0/1",
            reason=f"label of the wrong type for binary task {task!r}",
        )

    def default_metrics(self) -> list[metrics.base.Metric]:
        from river import metrics

        return [metrics.Accuracy(), metrics.F1(), metrics.LogLoss(), metrics.ROCAUC()]

    def check_label_column(self, task: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if values.dtype.kind == "b":
            return values.astype(float), np.ones(len(values), dtype=bool)
        if values.dtype.kind not in "fiu":
            column, present = super().check_label_column(task, values)
            return np.where(present, column, np.nan).astype(float), present
        column = values.astype(float)
        present = ~np.isnan(column)
        wrong = present & (column != 0.0) & (column != 1.0)
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise InvalidInput(
                f"label {values[row]!r} for binary task {task!r} is neither 0 nor 1; "
                f"expected True/False or 0/1 (row {row})",
                reason=f"label neither 0 nor 1 for binary task {task!r}",
            )
        return column, present


class Multiclass(Task):
    """A categorical target whose classes are discovered as they appear (the head grows).

    Class labels are strings (valid Unicode: no lone surrogate), integers (of 64 bits) or
    booleans; an integral float such as `2.0` (what pandas makes of an integer column
    with missing values) is read as `2`.

    Parameters
    ----------
    max_classes
        The most classes the task takes in: a label that would be one more is refused
        (`InvalidInput`), since every class is a head output with its own second-order
        state, (features + 1)^2 floats per linear head.

    >>> Multiclass().check_label("segment", "b")
    'b'
    >>> Multiclass().check_label("segment", 2.0)
    2
    """

    kind = MULTICLASS

    def __init__(self, max_classes: int = 100) -> None:
        if isinstance(max_classes, bool) or not (isinstance(max_classes, int) and max_classes > 0):
            raise InvalidInput(f"max_classes must be a positive integer, got {max_classes!r}")
        self.max_classes = max_classes

    def check_label(self, task: str, label: object) -> str | int | bool | None:
        if type(label) is str:  # the common case, checked cheaply
            if not label.isascii():
                _check_text(task, label)
            return label
        if _is_missing(label):
            return None
        if isinstance(label, bool | np.bool_):
            return bool(label)
        if isinstance(label, str):
            _check_text(task, label)
            return str(label)
        if isinstance(label, numbers.Integral) and -(2**63) <= label < 2**63:
            return int(label)
        if isinstance(label, numbers.Real) and not isinstance(label, numbers.Integral):
            if math.isfinite(label) and float(label).is_integer() and abs(label) < 2**63:
                return int(label)
            raise InvalidInput(
                f"label {label!r} for multiclass task {task!r} is not a class: "
                "expected a string, an integer or a boolean",
                reason=f"label that is not a class for multiclass task {task!r}",
            )
        if isinstance(label, numbers.Integral):
            raise InvalidInput(
                f"label for multiclass task {task!r} is an integer beyond 64 bits",
                reason=f"label that is not a class for multiclass task {task!r}",
            )
        raise InvalidInputType(
            f"label {label!r} for multiclass task {task!r} is a {type(label).__name__}; "
            "expected a string, an integer or a boolean",
            reason=f"label of the wrong type for multiclass task {task!r}",
        )

    def default_metrics(self) -> list[metrics.base.Metric]:
        from river import metrics

        return [metrics.Accuracy(), metrics.MacroF1()]


def _check_text(task: str, label: str) -> None:
    """Refuse a string that is not valid Unicode text (a lone surrogate): no JSON answer
    or checkpoint could carry it."""
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"label {label!r} for multiclass task {task!r} is not valid Unicode text "
            "(it holds a lone surrogate)",
            reason=f"label that is not a class for multiclass task {task!r}",
        ) from None


TASK_KINDS: dict[str, type[Task]] = {
    REGRESSION: Regression,
    BINARY: Binary,
    MULTICLASS: Multiclass,
}


def task_from_kind(kind: str) -> Task:
    """The task object for a kind name (`"regression"`, `"binary"`, `"multiclass"`).

    >>> task_from_kind("binary")
    Binary (
      threshold="f1"
    )
    """
    try:
        return TASK_KINDS[kind]()
    except KeyError:
        raise InvalidInput(
            f"unknown task kind {kind!r}; expected one of {sorted(TASK_KINDS)}"
        ) from None


def unknown_task(name: object, names: typing.Iterable[str]) -> InvalidInput:
    """The error for labels of a task the model does not have (one wording everywhere)."""
    return InvalidInput(
        f"unknown task {name!r}; this model's tasks are {list(names)}",
        reason=f"labels for an unknown task {name!r}",
    )
