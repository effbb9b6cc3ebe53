"""stream-mtl: online multi-task learning on data streams.

The public names below are imported on first use (PEP 562), so that `import stream_mtl`
and `stream-mtl --help` stay fast; `from stream_mtl import MultiTaskLearner` works as
usual.
"""

from __future__ import annotations

import importlib
import typing

from stream_mtl.version import __version__

_EXPORTS = {
    "Binary": "stream_mtl.tasks",
    "DriftEvent": "stream_mtl.learner",
    "FeatureEncoder": "stream_mtl.features",
    "InvalidCheckpoint": "stream_mtl.exceptions",
    "InvalidInput": "stream_mtl.exceptions",
    "InvalidInputType": "stream_mtl.exceptions",
    "MultiTaskLearner": "stream_mtl.learner",
    "Multiclass": "stream_mtl.tasks",
    "Observation": "stream_mtl.observation",
    "Regression": "stream_mtl.tasks",
    "Task": "stream_mtl.tasks",
    "UnknownKey": "stream_mtl.exceptions",
}

__all__ = [
    "Binary",
    "DriftEvent",
    "FeatureEncoder",
    "InvalidCheckpoint",
    "InvalidInput",
    "InvalidInputType",
    "MultiTaskLearner",
    "Multiclass",
    "Observation",
    "Regression",
    "Task",
    "UnknownKey",
    "__version__",
]

if typing.TYPE_CHECKING:
    from stream_mtl.exceptions import (
        InvalidCheckpoint,
        InvalidInput,
        InvalidInputType,
        UnknownKey,
    )
    from stream_mtl.features import FeatureEncoder
    from stream_mtl.learner import DriftEvent, MultiTaskLearner
    from stream_mtl.observation import Observation
    from stream_mtl.tasks import Binary, Multiclass, Regression, Task


def __getattr__(name: str) -> typing.Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stream_mtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
