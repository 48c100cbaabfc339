"""`ImageFeatureStore`: build (resumable, locked), load and look up a folder of feature shards; the predictor's
lookup into a cache (`prediction_feature_lookup`)."""

import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BaseImageProcessor, ProcessorMixin

from ..image_loading_mmib import load_image
from ..modeling_mmib import MMIBModel
from .fingerprint import vision_fingerprint
from .shards import LOCK_FILE, SHARD_GLOB, _MemoryShard, _open_shards, content_key, write_shard

logger = logging.getLogger(__name__)


class ImageFeatureStore:
    """
    Pooled vision features of image files, looked up by the files' content (sha256 of their bytes).

    Built by [`ImageFeatureStore.build`] (in memory, or on disk with `cache_dir`) or opened with
    [`ImageFeatureStore.load`]. In memory it holds a sorted index of the keys (28 bytes per image) and, per shard,
    a memory map of the features; `lookup` reads only the rows it returns.

    Args:
        shards (`list`): feature blocks, each with `keys` `(n, 32)` uint8, `features` `(n, D)` and
            `unreadable_keys`: [`FeatureShard`]s or in-memory equivalents.
        feature_size (`int`): D.
        unreadable (`Sequence[str]`, *optional*): the files given to `build` that are missing or could not be
            decoded; they are masked like absent images.
        fingerprint (`str`, *optional*): identity of the vision tower and image processor that made the features.
    """

    def __init__(self, shards: list, feature_size: int, unreadable: Sequence[str] = (), fingerprint: str = ""):
        self.shards = shards
        self._feature_size = feature_size
        self.unreadable = sorted(unreadable)
        self.fingerprint = fingerprint
        keys = [shard.keys for shard in shards]
        all_keys = np.concatenate(keys) if keys else np.zeros((0, 32), dtype=np.uint8)
        # The first 8 bytes of each key, sorted, find a row by binary search; the next 8 confirm it.
        prefixes = all_keys[:, :8].copy().view(">u8").ravel() if len(all_keys) else np.zeros(0, ">u8")
        order = np.argsort(prefixes, kind="stable")
        self._prefixes = prefixes[order].astype(np.uint64)
        self._checks = all_keys[order, 8:16].copy().view("<u8").ravel() if len(all_keys) else np.zeros(0, "<u8")
        shard_ids = np.concatenate([np.full(len(k), i, dtype=np.int32) for i, k in enumerate(keys)]) if keys else []
        rows = np.concatenate([np.arange(len(k), dtype=np.int64) for k in keys]) if keys else []
        self._shard_ids = np.asarray(shard_ids, dtype=np.int32)[order]
        self._rows = np.asarray(rows, dtype=np.int64)[order]
        self._unreadable_keys = {bytes(key) for shard in shards for key in shard.unreadable_keys}
        self._path_keys: dict[str, tuple[int, int, bytes]] = {}

    @property
    def feature_size(self) -> int:
        return self._feature_size

    def __len__(self) -> int:
        return len(self._prefixes)

    def key_of(self, path: str) -> bytes | None:
        """The content key of a file (remembered per path while its size and modification time stay), or `None`
        for a missing file."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        known = self._path_keys.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        key = content_key(path)
        self._path_keys[path] = (stat.st_size, stat.st_mtime_ns, key)
        return key

    def _locate(self, key: bytes) -> tuple[int, int] | None:
        prefix = np.frombuffer(key[:8], dtype=">u8")[0].astype(np.uint64)
        check = np.frombuffer(key[8:16], dtype="<u8")[0]
        position = int(np.searchsorted(self._prefixes, prefix))
        while position < len(self._prefixes) and self._prefixes[position] == prefix:
            if self._checks[position] == check:
                return int(self._shard_ids[position]), int(self._rows[position])
            position += 1
        return None

    def features_of(self, path: str) -> torch.Tensor | None:
        """The cached feature vector of an image file, or `None` (missing, unreadable or not in the cache)."""
        key = self.key_of(path)
        location = None if key is None else self._locate(key)
        if location is None:
            return None
        shard, row = location
        return torch.from_numpy(np.array(self.shards[shard].features[row], dtype=np.float32))

    def __contains__(self, path: str) -> bool:
        key = self.key_of(path)
        return key is not None and (self._locate(key) is not None or key in self._unreadable_keys)

    @classmethod
    def build(
        cls,
        model: MMIBModel,
        image_processor: BaseImageProcessor,
        paths: Iterable[str],
        batch_size: int = 32,
        cache_dir: str | None = None,
        shard_size: int = 4096,
        num_workers: int = 0,
        verify: bool = True,
        device: str | torch.device | None = None,
    ) -> "ImageFeatureStore":
        """
        Run every distinct image that the cache does not hold yet once through `model.get_image_features`.

        Files are read by `load_image(path, on_unreadable="mask")`: a missing or undecodable file is logged, counted
        in `unreadable`, and masked by `lookup` like an absent image (the one policy of `mmib.image_loading_mmib`).
        With `cache_dir`, the features are written in shards of `shard_size` images as they are computed, under
        an exclusive lock of the folder; a build that is interrupted resumes from its complete shards. Shards made
        by another vision tower or image processor (another fingerprint) are deleted and recomputed; corrupt
        shards are reported, deleted and recomputed.

        Args:
            model ([`MMIBModel`]): the model whose frozen vision tower makes the features.
            image_processor ([`BaseImageProcessor`]): the processor's image processor.
            paths (`Iterable[str]`): image and crop files (duplicates and `None` are skipped).
            batch_size (`int`, *optional*, defaults to 32): images per forward pass.
            cache_dir (`str`, *optional*): the cache folder (created if needed).
            shard_size (`int`, *optional*, defaults to 4096): images per shard file.
            num_workers (`int`, *optional*, defaults to 0): processes that read, hash and preprocess the images
                while the tower runs (0: in this process).
            verify (`bool`, *optional*, defaults to `True`): check every existing shard's bytes against its
                checksum (one sequential read of the cache) besides its size.
            device (`str` or `torch.device`, *optional*): where the vision tower runs (training passes its own
                device, the GPU when there is one); the tower is moved there for the build and back afterwards.
                Defaults to where the tower is.
        """
        unique_paths = sorted({str(path) for path in paths if path})
        settings = (model, image_processor, unique_paths, batch_size, shard_size, num_workers, device)
        if cache_dir is None:
            # Hashing the tower's weights is only needed to validate or label a cache.
            return cls._compute(*settings, cache_dir=None, fingerprint="", shards=[])
        fingerprint = vision_fingerprint(model, image_processor)
        os.makedirs(cache_dir, exist_ok=True)
        with open(os.path.join(cache_dir, LOCK_FILE), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                for partial in Path(cache_dir).glob(".shard-*.partial"):
                    partial.unlink()  # left by a killed build: only the lock holder writes shards
                shards = _open_shards(cache_dir, fingerprint, repair=True, verify=verify)
                return cls._compute(*settings, cache_dir=cache_dir, fingerprint=fingerprint, shards=shards)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @classmethod
    def _compute(
        cls,
        model,
        image_processor,
        unique_paths,
        batch_size,
        shard_size,
        num_workers,
        device,
        cache_dir,
        fingerprint,
        shards,
    ) -> "ImageFeatureStore":
        store = cls(shards, model.config.vision_feature_size, fingerprint=fingerprint)
        todo, unreadable = [], []
        for path in unique_paths:
            key = store.key_of(path)
            if key is None or key in store._unreadable_keys:
                unreadable.append(path)
            elif store._locate(key) is None:
                todo.append(path)
        if todo:
            logger.info("Computing image features of %d files (%d cached).", len(todo), len(unique_paths) - len(todo))
        loader = torch.utils.data.DataLoader(
            _ImageFiles(todo, image_processor),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate_images,
        )
        pending: dict[str, list] = {"keys": [], "features": [], "unreadable": []}
        seen: set[bytes] = set()
        new_shards = []
        model_was_training = model.training
        model.eval()
        # Only the tower runs here: the rest of the model stays where it is (the Trainer places it later).
        home = next(model.vision_model.parameters()).device
        device = home if device is None else torch.device(device)
        if todo:
            model.vision_model.to(device)

        def flush():
            if not pending["keys"] and not pending["unreadable"]:
                return
            keys = np.stack(pending["keys"]) if pending["keys"] else np.zeros((0, 32), dtype=np.uint8)
            feature_rows = (
                torch.cat(pending["features"]) if pending["features"] else torch.zeros(0, store.feature_size)
            )
            bad = np.stack(pending["unreadable"]) if pending["unreadable"] else np.zeros((0, 32), dtype=np.uint8)
            if cache_dir is None:
                new_shards.append(_MemoryShard(keys, feature_rows.numpy(), bad))
            else:
                write_shard(cache_dir, keys, feature_rows, bad, fingerprint)
            for value in pending.values():
                value.clear()

        with tqdm(total=len(todo), desc="Image features", unit="image", disable=not todo) as progress:
            for batch in loader:
                good = [(key, pixels) for key, path, pixels in batch if pixels is not None and key not in seen]
                for key, path, pixels in batch:
                    if pixels is None:
                        unreadable.append(path)
                        if key is not None:  # a file that exists but does not decode: remembered by content
                            pending["unreadable"].append(np.frombuffer(key, dtype=np.uint8))
                if good:
                    seen.update(key for key, _ in good)
                    pixel_values = torch.stack([pixels for _, pixels in good]).to(device)
                    with torch.inference_mode():
                        features = model.get_image_features(pixel_values).float().cpu()
                    pending["keys"].extend(np.frombuffer(key, dtype=np.uint8) for key, _ in good)
                    pending["features"].append(features)
                progress.update(len(batch))
                if len(pending["keys"]) >= shard_size:
                    flush()
            flush()
        model.vision_model.to(home)
        model.train(model_was_training)
        if unreadable:
            logger.warning(
                "%d of %d image files could not be decoded and are masked like missing images (first: %s).",
                len(unreadable),
                len(unique_paths),
                ", ".join(sorted(unreadable)[:5]),
            )
        if cache_dir is not None:
            new_shards = _open_shards(cache_dir, fingerprint, repair=False, verify=False)
            shards = []
        result = cls(shards + new_shards, store.feature_size, unreadable, fingerprint)
        result._path_keys = store._path_keys
        return result

    @classmethod
    def load(cls, cache_dir: str, verify: bool = False) -> "ImageFeatureStore":
        """
        Open a cache folder written by `build`, without loading the features (they stay memory-mapped).

        Args:
            cache_dir (`str`): the folder.
            verify (`bool`, *optional*, defaults to `False`): also check every shard's bytes against its checksum.

        Raises:
            ValueError: the folder holds no shard, shards of different fingerprints, or a corrupt shard (named in
                the message, with what to do).
        """
        shards = _open_shards(cache_dir, None, repair=False, verify=verify)
        if not shards:
            raise ValueError(f"{cache_dir} holds no MMIB image feature shard ({SHARD_GLOB}).")
        fingerprints = {shard.fingerprint for shard in shards}
        if len(fingerprints) > 1:
            raise ValueError(f"{cache_dir} mixes shards of {len(fingerprints)} vision towers; rebuild it.")
        return cls(shards, shards[0].features.shape[1], fingerprint=fingerprints.pop())

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
            `(image_features, image_mask)` of shapes `(B, 1 + num_crops, D)` and `(B, 1 + num_crops)`; files that
            are missing, unreadable or not in the cache are masked.
        """
        batch_size = len(images)
        features = torch.zeros(batch_size, 1 + num_crops, self.feature_size)
        mask = torch.zeros(batch_size, 1 + num_crops, dtype=torch.bool)
        for post, (image, post_crops) in enumerate(zip(images, crops)):
            for slot, path in enumerate([image, *list(post_crops or [])[:num_crops]]):
                vector = self.features_of(path) if path else None
                if vector is not None:
                    features[post, slot] = vector
                    mask[post, slot] = True
        return features, mask


class _ImageFiles(torch.utils.data.Dataset):
    """Image files -> `(content key, path, pixel_values or None)`; runs in the `DataLoader` workers."""

    def __init__(self, paths: list[str], image_processor: BaseImageProcessor):
        self.paths, self.image_processor = paths, image_processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            key = content_key(path)
        except OSError:
            return None, path, None
        image = load_image(path, on_unreadable="mask")
        if image is None:
            return key, path, None
        return key, path, self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]


def _collate_images(items: list) -> list:
    return items


def prediction_feature_lookup(
    cache_dir: str, checkpoints: Sequence[tuple[str, torch.nn.Module, ProcessorMixin]]
) -> Callable[[str], torch.Tensor | None]:
    """
    The `image_feature_lookup` of [`~mmib.predictor_mmib.MMIBPredictor`] from a cache folder: `features_of` of
    the loaded [`ImageFeatureStore`] (a file's features by its content, `None` for a miss).

    Args:
        cache_dir (`str`): a folder made by [`ImageFeatureStore.build`].
        checkpoints (`Sequence`): `(name, model, processor)` of every checkpoint the predictor runs (an MMIB task
            model with `.mmib`); the cache must have been built with each one's vision tower and image processor.

    Raises:
        ValueError: the cache's fingerprint differs from a checkpoint's, or a checkpoint is text-only.
    """
    store = ImageFeatureStore.load(cache_dir)
    for name, model, processor in checkpoints:
        if model.config.text_only:
            raise ValueError(f"{name} is a text-only model: it uses no image features, drop the feature cache.")
        expected = vision_fingerprint(model.mmib, processor.image_processor)
        if store.fingerprint != expected:
            raise ValueError(
                f"The image feature cache {cache_dir} was built with another vision tower or image processor than "
                f"{name} (fingerprint {store.fingerprint[:12]}, the checkpoint's is {expected[:12]}): build a cache "
                "with this checkpoint (ImageFeatureStore.build(model.mmib, processor.image_processor, paths, "
                "cache_dir=...)) or predict without it."
            )
    return store.features_of
