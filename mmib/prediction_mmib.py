"""Old import path; use `mmib.predictor_mmib` (the predictor) and `mmib.posts_mmib` (reading posts)."""

from .posts_mmib import PostError, PreparedPost, prepare_post  # noqa: F401
from .predictor_mmib import MMIBPredictor, load_checkpoint, resolve_device, resolve_dtype  # noqa: F401
