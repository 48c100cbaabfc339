"""Cache of pooled vision-tower features: with a frozen vision tower, each image file goes through it once.

The authors' code re-runs ResNet-50 on the image and its crops at every training step (82% of a step on CPU).
A frozen tower in eval mode is a fixed function of the image, so `ImageFeatureStore.build` computes every distinct
image once and [`MMIBDataCollator`] feeds the cached vectors to the model as `image_features`.
"""

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import BaseImageProcessor

from .image_loading_mmib import load_image
from .modeling_mmib import MMIBModel

logger = logging.getLogger(__name__)


class ImageFeatureStore:
    """
    Pooled vision features keyed by image file path.

    Args:
        paths (`list[str]`): image files, one per row of `features`.
        features (`torch.Tensor` of shape `(len(paths), D)`): their pooled vision-tower outputs.
        unreadable (`list[str]`, *optional*): files that could not be decoded; they are masked like missing files.
        fingerprint (`str`, *optional*): identity of the vision tower and image processor that made the features
            (set when the store is read from or written to a cache file).
    """

    def __init__(
        self,
        paths: list[str],
        features: torch.Tensor,
        unreadable: Sequence[str] = (),
        fingerprint: str = "",
    ):
        if features.shape[0] != len(paths):
            raise ValueError(f"{len(paths)} paths but {features.shape[0]} feature rows.")
        self.index = {path: row for row, path in enumerate(paths)}
        self.features = features
        self.unreadable = sorted(unreadable)
        self.fingerprint = fingerprint

    @property
    def feature_size(self) -> int:
        return self.features.shape[1]

    @classmethod
    def build(
        cls,
        model: MMIBModel,
        image_processor: BaseImageProcessor,
        paths: Iterable[str],
        batch_size: int = 32,
        cache_file: str | None = None,
    ) -> "ImageFeatureStore":
        """
        Run every distinct image once through `model.get_image_features`, or reuse `cache_file` when it was made by
        the same vision tower and image processor (any other cache file is recomputed and overwritten).

        Files are read by `load_image(path, on_unreadable="mask")`: a missing or undecodable file is logged, counted
        in `unreadable`, and masked by `lookup` like an absent image (the one policy of `mmib.image_loading_mmib`).

        Args:
            model ([`MMIBModel`]): the model whose frozen vision tower makes the features.
            image_processor ([`BaseImageProcessor`]): the processor's image processor.
            paths (`Iterable[str]`): image and crop files (duplicates and `None` are skipped).
            batch_size (`int`, *optional*, defaults to 32): images per forward pass.
            cache_file (`str`, *optional*): a `.safetensors` file to read or write.
        """
        unique_paths = sorted({path for path in paths if path})
        # Hashing the tower's weights is only needed to validate or label a cache file.
        fingerprint = vision_fingerprint(model, image_processor) if cache_file else ""
        if cache_file and os.path.exists(cache_file):
            store = cls.load(cache_file)
            if store.fingerprint == fingerprint and set(unique_paths) <= set(store.index) | set(store.unreadable):
                logger.info("Loaded %d cached image features from %s.", len(store.index), cache_file)
                return store
            logger.info("The feature cache %s is for another vision tower or image set: recomputing.", cache_file)
        readable, chunks, unreadable = [], [], []
        model_was_training = model.training
        model.eval()
        for start in tqdm(range(0, len(unique_paths), batch_size), desc="Image features", unit="batch"):
            images = []
            for path in unique_paths[start : start + batch_size]:
                image = load_image(path, on_unreadable="mask")
                if image is None:
                    unreadable.append(path)
                    continue
                images.append(image)
                readable.append(path)
            if images:
                pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
                with torch.inference_mode():
                    chunks.append(model.get_image_features(pixel_values.to(model.device)).float().cpu())
        model.train(model_was_training)
        if unreadable:
            logger.warning(
                "%d of %d image files could not be decoded and are masked like missing images (first: %s).",
                len(unreadable),
                len(unique_paths),
                ", ".join(unreadable[:5]),
            )
        features = torch.cat(chunks) if chunks else torch.zeros(0, model.config.vision_feature_size)
        store = cls(readable, features, unreadable, fingerprint)
        if cache_file:
            store.save(cache_file)
        return store

    def save(self, path: str) -> None:
        """Write the features and their paths to a `.safetensors` file (no pickle)."""
        paths = sorted(self.index, key=self.index.get)
        metadata = {
            "paths": json.dumps(paths),
            "unreadable": json.dumps(self.unreadable),
            "fingerprint": self.fingerprint,
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Written aside and renamed, so that an interrupted run never leaves a truncated cache behind.
        partial = f"{path}.partial"
        save_file({"features": self.features.contiguous()}, partial, metadata=metadata)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str) -> "ImageFeatureStore":
        """Read a file written by `save`."""
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "paths" not in metadata:
            raise ValueError(f"{path} is not an MMIB image feature cache (no 'paths' metadata).")
        return cls(
            json.loads(metadata["paths"]),
            load_file(path)["features"],
            json.loads(metadata.get("unreadable", "[]")),
            metadata.get("fingerprint", ""),
        )

    def lookup(
        self, images: Sequence[str | None], crops: Sequence[Sequence[str]], num_crops: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Features of a batch of posts, laid out as the model's `image_features` input.

        Args:
            images (`Sequence[str | None]`): whole-image file of each post, `None` when missing.
            crops (`Sequence[Sequence[str]]`): crop files of each post; the first `num_crops` are used.
            num_crops (`int`): crop slots per post.

        Returns:
            `(image_features, image_mask)` of shapes `(B, 1 + num_crops, D)` and `(B, 1 + num_crops)`; paths that are
            unknown to the store or unreadable are masked.
        """
        batch_size = len(images)
        features = torch.zeros(batch_size, 1 + num_crops, self.feature_size)
        mask = torch.zeros(batch_size, 1 + num_crops, dtype=torch.bool)
        for post, (image, post_crops) in enumerate(zip(images, crops)):
            for slot, path in enumerate([image, *list(post_crops or [])[:num_crops]]):
                row = self.index.get(path) if path else None
                if row is not None:
                    features[post, slot] = self.features[row]
                    mask[post, slot] = True
        return features, mask


def vision_fingerprint(model: MMIBModel, image_processor: BaseImageProcessor) -> str:
    """sha256 over the vision tower's weights and config, its pooling and the image processor's settings: the same
    tower pooled another way, or fed other pixels, makes other features."""
    digest = hashlib.sha256()
    digest.update(model.config.vision_config.to_json_string().encode())
    digest.update(model.config.vision_feature_pooling.encode())
    digest.update(image_processor.to_json_string().encode())
    for name, tensor in sorted(model.vision_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
