"""Evaluation: prequential runs, their reports and plots, and the baselines run beside the model."""

from __future__ import annotations

from stream_mtl.evaluate.baselines import (
    MeanPredictor,
    RiverLinear,
    SecondOrderLinear,
    SingleTaskModels,
)
from stream_mtl.evaluate.prequential import default_metrics, iter_prequential, prequential
from stream_mtl.evaluate.report import Report

__all__ = [
    "MeanPredictor",
    "Report",
    "RiverLinear",
    "SecondOrderLinear",
    "SingleTaskModels",
    "default_metrics",
    "iter_prequential",
    "prequential",
]
