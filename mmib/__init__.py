"""mmib: MMIB multimodal NER and relation extraction for the Hugging Face stack.

Importing the package registers the MMIB classes with the transformers Auto classes, so that saved checkpoints
load with `AutoConfig`, `AutoModel`, `AutoModelForTokenClassification`, `AutoModelForSequenceClassification` and
`AutoProcessor` without `trust_remote_code`, and registers the `mmib-ner` pipeline task.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from .configuration_mmib import MMIBConfig
from .modeling_mmib import (
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBModel,
    MMIBPreTrainedModel,
)
from .pipeline_mmib import MMIBTokenClassificationPipeline
from .prediction_mmib import MMIBPredictor
from .processing_mmib import MMIBProcessor

AutoConfig.register(MMIBConfig.model_type, MMIBConfig, exist_ok=True)
AutoModel.register(MMIBConfig, MMIBModel, exist_ok=True)
AutoModelForTokenClassification.register(MMIBConfig, MMIBForTokenClassification, exist_ok=True)
AutoModelForSequenceClassification.register(MMIBConfig, MMIBForRelationClassification, exist_ok=True)
AutoProcessor.register(MMIBConfig, MMIBProcessor, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "MMIBConfig",
    "MMIBForRelationClassification",
    "MMIBForTokenClassification",
    "MMIBModel",
    "MMIBPreTrainedModel",
    "MMIBPredictor",
    "MMIBProcessor",
    "MMIBTokenClassificationPipeline",
]
