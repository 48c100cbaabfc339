"""Training MMIB: arguments, the run (`mmib train`), the Trainer, the collator, evaluation, metrics and the card."""

from .collator import MMIBDataCollator
from .evaluation import build_compute_metrics
from .run import main
from .trainer import MMIBTrainer

__all__ = ["MMIBDataCollator", "MMIBTrainer", "build_compute_metrics", "main"]
