"""The feature cache's shard format: content keys, `FeatureShard`, writing and opening (with repair) of shards."""

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..atomic_files_mmib import atomic_write

logger = logging.getLogger(__name__)


FORMAT = "mmib-image-features-v2"


SHARD_GLOB = "shard-*.safetensors"


LOCK_FILE = ".lock"


_SAFETENSORS_DTYPES = {"F32": np.float32, "U8": np.uint8}


def content_key(path: str | os.PathLike) -> bytes:
    """sha256 of a file's bytes: the cache key of an image, the same for renamed and copied files."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


class CorruptShardError(ValueError):
    """A cache shard that is truncated, not a feature shard, or whose bytes do not match its checksum."""


class FeatureShard:
    """
    One memory-mapped shard of the cache: the safetensors header is parsed here and the tensors are mapped with
    `numpy.memmap`, so opening a shard reads only its header and its keys.

    Args:
        path (`str`): the shard file.

    Raises:
        CorruptShardError: the file is shorter or longer than its header says, or is not a feature shard.
    """

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        try:
            with open(path, "rb") as handle:
                (header_size,) = struct.unpack("<Q", handle.read(8))
                if header_size > size:
                    raise CorruptShardError(f"header size {header_size} > file size {size}")
                header = json.loads(handle.read(header_size))
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptShardError(f"{path}: unreadable safetensors header ({error}).") from error
        metadata = header.pop("__metadata__", {}) or {}
        if metadata.get("format") != FORMAT or "features" not in header or "keys" not in header:
            raise CorruptShardError(f"{path} is not an MMIB image feature shard.")
        data_start = 8 + header_size
        end = max(entry["data_offsets"][1] for entry in header.values())
        if size != data_start + end:
            raise CorruptShardError(
                f"{path} is truncated or overlong: {size} bytes on disk, its header describes {data_start + end}."
            )
        self.metadata = metadata
        self.fingerprint = metadata.get("fingerprint", "")
        self._data_start, self._header = data_start, header
        self.features = self._map("features")
        self.keys = np.ascontiguousarray(self._map("keys"))
        self.unreadable_keys = (
            np.ascontiguousarray(self._map("unreadable_keys")) if "unreadable_keys" in header else np.zeros((0, 32))
        )

    def _map(self, name: str) -> np.ndarray:
        entry = self._header[name]
        start, end = entry["data_offsets"]
        if end == start:
            return np.zeros(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
        return np.memmap(
            self.path,
            dtype=_SAFETENSORS_DTYPES[entry["dtype"]],
            mode="r",
            offset=self._data_start + start,
            shape=tuple(entry["shape"]),
        )

    def verify(self) -> None:
        """Compare the tensors' bytes with the checksum in the metadata (plain reads, not the memory map)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            handle.seek(self._data_start)
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != self.metadata.get("sha256"):
            raise CorruptShardError(f"{self.path}: its bytes do not match the checksum in its metadata.")


def write_shard(folder: str, keys: np.ndarray, features: torch.Tensor, unreadable_keys: np.ndarray, fingerprint: str):
    """
    Write one shard atomically and durably ([`atomic_write`]) under a name made from its content (two processes that
    compute the same images write the same file).
    """
    tensors = {
        "features": features.float().contiguous(),
        "keys": torch.from_numpy(np.ascontiguousarray(keys, dtype=np.uint8)).reshape(-1, 32),
        "unreadable_keys": torch.from_numpy(np.ascontiguousarray(unreadable_keys, dtype=np.uint8)).reshape(-1, 32),
    }
    digest = hashlib.sha256()
    # safetensors lays the tensors out sorted by name: the checksum follows the same order as the bytes on disk.
    for name in sorted(tensors):
        digest.update(tensors[name].numpy().tobytes())
    metadata = {"format": FORMAT, "fingerprint": fingerprint, "rows": str(len(keys)), "sha256": digest.hexdigest()}
    name = f"shard-{hashlib.sha256(fingerprint.encode() + digest.digest()).hexdigest()[:24]}.safetensors"
    atomic_write(
        os.path.join(folder, name), lambda target: save_file(tensors, target, metadata=metadata), durable=True
    )


class _MemoryShard:
    """An in-memory block with the attributes of a [`FeatureShard`] (a build without `cache_dir`)."""

    def __init__(self, keys: np.ndarray, features: np.ndarray, unreadable_keys: np.ndarray):
        self.keys, self.features, self.unreadable_keys = keys, features, unreadable_keys


def _open_shards(cache_dir: str, fingerprint: str | None, repair: bool, verify: bool) -> list[FeatureShard]:
    """
    Open every shard of the folder. With `repair`, corrupt shards and shards of another fingerprint are deleted
    (with a warning naming them); without it, a corrupt shard raises.
    """
    shards = []
    for path in sorted(Path(cache_dir).glob(SHARD_GLOB)):
        try:
            shard = FeatureShard(str(path))
            if verify:
                shard.verify()
        except CorruptShardError as error:
            if not repair:
                raise CorruptShardError(
                    f"Corrupt image feature cache shard: {error} Delete it (its images are then recomputed by "
                    "ImageFeatureStore.build / train_mmib.py) or rebuild the cache."
                ) from error
            logger.warning("Deleting the corrupt feature cache shard %s (%s); its images are recomputed.", path, error)
            path.unlink()
            continue
        if fingerprint is not None and shard.fingerprint != fingerprint:
            if repair:
                logger.info("The feature cache shard %s is for another vision tower: recomputing.", path)
                path.unlink()
            continue
        shards.append(shard)
    return shards
