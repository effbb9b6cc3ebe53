"""Task-weighting strategies: how much each task's loss counts at each step.

`Equal`, `Uncertainty`, `DWA`, `GradNorm` and `Relatedness` set the loss weights; `DriftAware`
wraps any of them with a drift detector per task (the learner's default is
`DriftAware(DWA())`).
"""

from __future__ import annotations

from stream_mtl.weighting.base import StepWeights, WeightingStrategy
from stream_mtl.weighting.drift import DriftAware
from stream_mtl.weighting.dwa import DWA
from stream_mtl.weighting.equal import Equal
from stream_mtl.weighting.gradnorm import GradNorm
from stream_mtl.weighting.relatedness import Relatedness
from stream_mtl.weighting.uncertainty import Uncertainty

__all__ = [
    "DWA",
    "DriftAware",
    "Equal",
    "GradNorm",
    "Relatedness",
    "StepWeights",
    "Uncertainty",
    "WeightingStrategy",
]
