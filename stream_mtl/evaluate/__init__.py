"""Evaluation: prequential runs, their reports, and the baselines shown beside the model."""

from __future__ import annotations

from stream_mtl.evaluate.baselines import MeanPredictor
from stream_mtl.evaluate.prequential import Report, default_metrics, prequential

__all__ = ["MeanPredictor", "Report", "default_metrics", "prequential"]
