"""Old import path; use `mmib.training.collator`."""

from .training.collator import MMIBDataCollator  # noqa: F401
