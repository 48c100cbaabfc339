"""Batch collation: dataset rows -> padded model inputs, with cached image features or raw pixels."""

from dataclasses import dataclass, field
from typing import Any

import torch

from ..features import ImageFeatureStore
from ..image_loading_mmib import load_image
from ..processing_mmib import MMIBProcessor


@dataclass
class MMIBDataCollator:
    """
    Turns rows of an MMIB dataset (see `mmib.data`) into one padded batch for the model.

    Padding is dynamic: to the longest post of the batch. With `feature_store`, the images come as cached
    `image_features` (frozen vision tower); without it, the image files are loaded into `pixel_values`. Both paths
    follow the same data-set policy for files that cannot be read (`load_image(..., on_unreadable="mask")`): the
    slot is masked like an absent image, a warning names the file, and the file is counted (in
    `feature_store.unreadable`, or here in `unreadable` for the files this process collated).

    Args:
        processor ([`MMIBProcessor`]): tokenizer + image processor; its `task` decides the row schema and its
            `num_crops` the image slots.
        feature_store ([`ImageFeatureStore`], *optional*): cached features of every image and crop file.
    """

    processor: MMIBProcessor
    feature_store: ImageFeatureStore | None = None
    unreadable: set[str] = field(default_factory=set)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        words = [row["words"] for row in rows]
        images = [row.get("image") for row in rows]
        crops = [list(row.get("crops") or [])[: self.processor.num_crops] for row in rows]
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
            images = [self._load(path) for path in images]
            crops = [[self._load(path) for path in post_crops] for post_crops in crops]
            # An unreadable crop stays a masked slot at its place, exactly as `feature_store.lookup` masks it.
            return dict(self.processor(words, images=images, crops=crops, **task_inputs))
        batch = dict(self.processor(words, **task_inputs))
        batch.pop("pixel_values", None)
        batch["image_features"], batch["image_mask"] = self.feature_store.lookup(
            images, crops, self.processor.num_crops
        )
        return batch

    def _load(self, path: str | None):
        image = load_image(path, on_unreadable="mask")
        if path is not None and image is None:
            self.unreadable.add(path)
        return image
