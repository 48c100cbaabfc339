"""The identity of a feature cache: `vision_fingerprint` hashes what `vision_towers_mmib.vision_settings` reads."""

import hashlib
import json

import numpy as np
from transformers import BaseImageProcessor

from ..modeling_mmib import MMIBModel
from ..vision_towers_mmib import vision_settings


def _json_value(value):
    """What `json.dumps` cannot write by itself: numpy arrays and scalars (image means and stds), dtypes."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return str(value)


def vision_fingerprint(model: MMIBModel, image_processor: BaseImageProcessor) -> str:
    """
    The identity of a feature cache: sha256 of [`vision_settings`]. Training (`ImageFeatureStore.build`) and
    prediction (`prediction_feature_lookup`) both use it, so a cache built while training matches the checkpoint
    that the training saves, and one built with another tower, pooling or preprocessing does not.
    """
    settings = json.dumps(vision_settings(model, image_processor), sort_keys=True, default=_json_value)
    return hashlib.sha256(settings.encode()).hexdigest()
