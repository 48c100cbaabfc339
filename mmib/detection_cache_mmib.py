"""
The detection cache of object extraction (see `object_extraction_mmib`): the objects of an image, keyed by the
image's content (SHA-256 of the file's bytes, so a renamed or re-posted copy is never detected twice), the settings
and weights that decide the detections, and the image's queries. Kept in memory and optionally on disk, one JSON
file per key (`<cache_dir>/<key[:2]>/<key>.json`, written atomically), so that runs and processes share it.

Travels with checkpoints as remote code: it imports only PIL, the standard library and its `*_mmib.py` siblings.
"""

import hashlib
import json
import os
from collections.abc import Sequence

from PIL import Image

from .atomic_files_mmib import atomic_write_text
from .object_boxes_mmib import DetectedObject

__all__ = ["DetectionCache", "detection_key", "image_sha256"]


def image_sha256(image: Image.Image | str | os.PathLike) -> str:
    """The content hash of an image: of a file's bytes, or of a PIL image's mode, size and pixels."""
    digest = hashlib.sha256()
    if isinstance(image, Image.Image):
        digest.update(f"{image.mode}{image.size}".encode() + image.tobytes())
        return digest.hexdigest()
    with open(image, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detection_key(image_sha256: str, fingerprint: str, queries: Sequence[str]) -> str:
    """
    SHA-256 of an image's content hash, the extractor's fingerprint (what, beyond the image and the queries,
    decides the detections) and the queries.
    """
    return hashlib.sha256(json.dumps([image_sha256, fingerprint, list(queries)]).encode()).hexdigest()


class DetectionCache:
    """
    Objects by [`detection_key`], without crops.

    Args:
        cache_dir (`str`, *optional*): folder of the JSON files; `None`: in memory only.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, list[DetectedObject]] = {}

    def _path(self, key: str) -> str:
        return os.path.join(self.cache_dir, key[:2], f"{key}.json")

    def get(self, key: str) -> list[DetectedObject] | None:
        """The objects stored under `key`, from memory or disk; `None` if unknown."""
        if key in self._memory:
            return self._memory[key]
        if self.cache_dir is None or not os.path.isfile(self._path(key)):
            return None
        with open(self._path(key), encoding="utf-8") as handle:
            objects = [DetectedObject.from_dict(item) for item in json.load(handle)["objects"]]
        self._memory[key] = objects
        return objects

    def put(self, key: str, image_sha256: str, queries: Sequence[str], objects: list[DetectedObject]) -> None:
        """Stores `objects` under `key` in memory and, with a `cache_dir`, atomically on disk."""
        self._memory[key] = objects
        if self.cache_dir is None:
            return
        os.makedirs(os.path.dirname(self._path(key)), exist_ok=True)
        record = {"image_sha256": image_sha256, "queries": list(queries), "objects": [o.to_dict() for o in objects]}
        atomic_write_text(self._path(key), json.dumps(record))

    def clear(self) -> None:
        """Forgets what is in memory (the files on disk stay)."""
        self._memory.clear()
