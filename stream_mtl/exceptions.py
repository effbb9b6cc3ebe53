"""The errors stream-mtl raises for bad input: one family that callers can rely on.

Every feature, label, task name, setting or checkpoint that stream-mtl refuses raises an
`InvalidInput` whose message names the culprit, and leaves the model as it was.
`InvalidInput` is a `ValueError`; its subclass `InvalidInputType`, raised for a value of
the wrong type, is also a `TypeError`, so code that catches the built-in exceptions keeps
working. `InvalidCheckpoint` is raised for a file that is not a checkpoint this version
can load.

>>> from stream_mtl import InvalidInput, MultiTaskLearner, Regression
>>> model = MultiTaskLearner(tasks={"price": Regression()}, hidden=())
>>> try:
...     model.learn_one({"size": float("nan")}, {"price": 1.0})
... except InvalidInput as error:
...     print(error)
feature 'size' is NaN; features must be finite numbers
>>> try:
...     model.learn_one({"size": 1.0}, {"price": "cheap"})
... except TypeError as error:
...     print(type(error).__name__, "-", error)
InvalidInputType - label 'cheap' for regression task 'price' is a str; expected a number
"""

from __future__ import annotations

__all__ = [
    "InvalidCheckpoint",
    "InvalidInput",
    "InvalidInputType",
    "UnexpectedError",
    "UnknownKey",
]


class InvalidInput(ValueError):
    """A feature, label, task name, setting or file that stream-mtl refuses; says which.

    `reason` is the message without the offending value (for example "label of the wrong
    type for regression task 'price'"): what a stream counts its set-aside records by,
    so that one mix-up is one reason, however many values it takes.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason

    def __reduce__(self) -> tuple:
        # Pickled whole (its message, reason and key), so that the learner process of a
        # service can raise it in the process that called.
        return _restore, (type(self), self.args, self.__dict__)


class InvalidInputType(InvalidInput, TypeError):
    """An `InvalidInput` whose value has the wrong type."""


class InvalidCheckpoint(InvalidInput):
    """A file that is not a stream-mtl checkpoint this version can load, or is corrupt."""


class UnknownKey(InvalidInput, KeyError):
    """Labels sent under a key that holds no features: never sent, or held too long.

    Also a `KeyError`, so that a service can answer it as "not found".
    """

    def __init__(self, key: object) -> None:
        super().__init__(
            f"no features are held under key {key!r} (never sent, or expired)",
            reason="labels for an unknown or expired key",
        )
        self.key = key

    __str__ = InvalidInput.__str__  # KeyError's own would quote the message


class UnexpectedError(InvalidInput):
    """An event on which the model raised something other than `InvalidInput` (a fault of
    the library's, or of a value no check foresaw). A driver that must not stop on one
    event (the Kafka loop) sets it aside like bad input, with this text, and logs the
    traceback; the original exception is its `__cause__`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(
            f"the model raised {type(error).__name__}: {str(error)[:300]}",
            reason=f"the model raised {type(error).__name__}",
        )


def _restore(cls: type, args: tuple, state: dict) -> InvalidInput:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error
