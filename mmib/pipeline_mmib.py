"""
The `mmib-ner` transformers pipeline: `pipeline(model=checkpoint, trust_remote_code=True)` on a post.

Travels with checkpoints as remote code (see CONTRIBUTING.md).
"""

import os
from typing import Any

from transformers import AutoModelForTokenClassification, Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY

from .predictor_mmib import MMIBPredictor

__all__ = ["MMIBTokenClassificationPipeline", "PIPELINE_TASK", "save_pipeline_code"]

PIPELINE_TASK = "mmib-ner"


class MMIBTokenClassificationPipeline(Pipeline):
    """
    Multimodal NER on one post: `{"text": str, "image": path or PIL image (optional), "crops": [...] (optional)}`
    or a plain string, returning the token-classification pipeline's grouped format: a list of
    `{"entity_group", "score", "word", "start", "end"}` with character offsets into the text and `score` the CRF
    probability of the entity's tag span.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.predictor = MMIBPredictor(self.model, self.processor)

    def _sanitize_parameters(self, **kwargs) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(f"The {PIPELINE_TASK} pipeline takes no options, got {sorted(kwargs)}.")
        return {}, {}, {}

    def preprocess(self, inputs: str | dict[str, Any]) -> dict[str, Any]:
        post = self.predictor.prepare(inputs, default_id=0)
        if post.error is not None:
            raise ValueError(f"Cannot use this post: {post.error}")
        return {"post": post, "inputs": self.predictor.encode([post])}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        return self.predictor.predict_prepared([model_inputs["post"]], model_inputs["inputs"])[0]

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "entity_group": entity["type"],
                "score": entity["score"],
                "word": entity["text"],
                "start": entity["start"],
                "end": entity["end"],
            }
            for entity in model_outputs["entities"]
        ]


# Both `import mmib` and loading this file as a checkpoint's remote code register the task; the first one stays.
if PIPELINE_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK,
        pipeline_class=MMIBTokenClassificationPipeline,
        pt_model=AutoModelForTokenClassification,
        type="multimodal",
    )


def save_pipeline_code(model, save_directory: str | os.PathLike) -> None:
    """
    Makes an NER checkpoint folder load with `pipeline(model=folder, trust_remote_code=True)`: records the pipeline
    in `model.config.custom_pipelines` (saved with the model's next `save_pretrained`, so call this first) and copies
    this file and the files it imports into `save_directory`, so that they are uploaded with the checkpoint.
    """
    model.config.custom_pipelines = {
        PIPELINE_TASK: {
            "impl": f"pipeline_mmib.{MMIBTokenClassificationPipeline.__name__}",
            "pt": ("AutoModelForTokenClassification",),
            "type": "multimodal",
        }
    }
    os.makedirs(save_directory, exist_ok=True)
    custom_object_save(MMIBTokenClassificationPipeline, save_directory)
