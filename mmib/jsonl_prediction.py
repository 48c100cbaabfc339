"""Old import path; use `mmib.batch_prediction`."""

from .batch_prediction import PredictionSummary, StrictModeError, predict_file  # noqa: F401
