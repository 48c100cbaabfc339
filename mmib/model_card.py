"""Old import path; use `mmib.training.model_card`."""

from .training.model_card import ModelCardInfo, render_model_card  # noqa: F401
