"""Batch collation: dataset rows -> padded model inputs, with cached image features or raw pixels."""

from dataclasses import dataclass
from typing import Any

import torch

from .features import ImageFeatureStore
from .processing_mmib import MMIBProcessor


@dataclass
class MMIBDataCollator:
    """
    Turns rows of an MMIB dataset (see `mmib.data`) into one padded batch for the model.

    Padding is dynamic: to the longest post of the batch. With `feature_store`, the images come as cached
    `image_features` (frozen vision tower); without it, the processor loads the image files into `pixel_values`.

    Args:
        processor ([`MMIBProcessor`]): tokenizer + image processor; its `task` decides the row schema.
        feature_store ([`ImageFeatureStore`], *optional*): cached features of every image and crop file.
    """

    processor: MMIBProcessor
    feature_store: ImageFeatureStore | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        words = [row["words"] for row in rows]
        images = [row.get("image") for row in rows]
        crops = [row.get("crops") or [] for row in rows]
        if self.processor.task == "ner":
            labels = [row["ner_tags"] for row in rows] if "ner_tags" in rows[0] else None
            task_inputs = {"labels": labels}
        else:
            labels = [row["relation"] for row in rows] if "relation" in rows[0] else None
            task_inputs = {
                "labels": labels,
                "head_spans": [row["head_span"] for row in rows],
                "tail_spans": [row["tail_span"] for row in rows],
            }
        if self.feature_store is None:
            return dict(self.processor(words, images=images, crops=crops, **task_inputs))
        batch = dict(self.processor(words, **task_inputs))
        batch.pop("pixel_values", None)
        batch["image_features"], batch["image_mask"] = self.feature_store.lookup(
            images, crops, self.processor.num_crops
        )
        return batch
