"""Cheap models of costly measurements: latency lookup tables, learned latency and accuracy
predictors. Every predictor works on batches of canonical encodings with numpy.

``predictors.create(kind, space, target, device)`` builds one; ``predictors.load(path)`` reads one.
"""

from predictors.base import Predictor, PredictorError, create, kinds, load, read_meta, register
from predictors.metrics import format_report, quality_report
from predictors import learned, lut  # noqa: F401  (kinds register on import)

__all__ = ["Predictor", "PredictorError", "create", "format_report", "kinds", "load", "quality_report",
           "read_meta", "register"]
