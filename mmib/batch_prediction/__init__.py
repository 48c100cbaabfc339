"""Prediction over JSON-lines post files: reading posts, streaming, worker/rank sharding, order-keeping output and a
summary."""

from .post_files import iter_lines, prepare_line, read_posts
from .streaming import PredictionSummary, StrictModeError, predict_file

__all__ = ["PredictionSummary", "StrictModeError", "iter_lines", "predict_file", "prepare_line", "read_posts"]
