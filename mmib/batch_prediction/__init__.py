"""Prediction over JSON-lines post files (read by `mmib.post_files`): streaming, worker/rank sharding, order-keeping
output and a summary."""

from .streaming import PredictionSummary, StrictModeError, predict_file

__all__ = ["PredictionSummary", "StrictModeError", "predict_file"]
