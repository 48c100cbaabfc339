"""Old import path; use `mmib.vision_towers_mmib`."""

from .vision_towers_mmib import has_image_processor_settings, load_image_processor  # noqa: F401
