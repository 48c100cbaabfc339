"""Old import path; use `mmib.training.trainer`."""

from .training.trainer import LOSS_PARTS, MMIBTrainer, NonFiniteTrainingError  # noqa: F401
