"""mmib: MMIB multimodal NER and relation extraction for the Hugging Face stack.

Importing the package registers the MMIB classes with the transformers Auto classes, so that saved checkpoints
load with `AutoConfig`, `AutoModel`, `AutoModelForTokenClassification`, `AutoModelForSequenceClassification` and
`AutoProcessor` without `trust_remote_code`, and registers the `mmib-ner` pipeline task.
"""

import transformers
from transformers import AutoConfig, AutoProcessor

from .building import build_model_and_processor, load_model_and_processor
from .configuration_mmib import MMIBConfig
from .image_loading_mmib import UnreadableImageError, load_image
from .modeling_mmib import (
    AUTO_CLASSES,
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBModel,
    MMIBPreTrainedModel,
    mmib_total_loss,
)
from .pipeline_mmib import MMIBTokenClassificationPipeline
from .predictor_mmib import MMIBPredictor
from .processing_mmib import MMIBProcessor

AutoConfig.register(MMIBConfig.model_type, MMIBConfig, exist_ok=True)
for _model_class, _auto_class in AUTO_CLASSES.items():
    getattr(transformers, _auto_class).register(MMIBConfig, _model_class, exist_ok=True)
AutoProcessor.register(MMIBConfig, MMIBProcessor, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "AUTO_CLASSES",
    "MMIBConfig",
    "MMIBForRelationClassification",
    "MMIBForTokenClassification",
    "MMIBModel",
    "MMIBPreTrainedModel",
    "MMIBPredictor",
    "MMIBProcessor",
    "MMIBTokenClassificationPipeline",
    "UnreadableImageError",
    "build_model_and_processor",
    "load_image",
    "load_model_and_processor",
    "mmib_total_loss",
]

from .object_boxes_mmib import DetectedObject  # noqa: E402
from .object_extraction_mmib import MMIBObjectExtractor  # noqa: E402

__all__ += ["DetectedObject", "MMIBObjectExtractor"]
