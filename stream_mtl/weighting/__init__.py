"""Task-weighting strategies: how much each task's loss counts at each step."""

from __future__ import annotations

from stream_mtl.weighting.base import StepWeights, WeightingStrategy
from stream_mtl.weighting.equal import Equal

__all__ = ["Equal", "StepWeights", "WeightingStrategy"]
