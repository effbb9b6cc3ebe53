"""stream-mtl: online multi-task learning on data streams."""

from __future__ import annotations

__version__ = "0.1.0"

from stream_mtl.exceptions import InvalidCheckpoint, InvalidInput, InvalidInputType
from stream_mtl.features import FeatureEncoder
from stream_mtl.learner import DriftEvent, MultiTaskLearner
from stream_mtl.observation import Observation
from stream_mtl.tasks import Binary, Multiclass, Regression, Task

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
    "__version__",
]
