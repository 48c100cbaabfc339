"""Cache of pooled vision-tower features: with a frozen vision tower, each image goes through it once.

The authors' code re-runs ResNet-50 on the image and its crops at every training step (82% of a step on CPU).
A frozen tower in eval mode is a fixed function of the image, so `ImageFeatureStore.build` computes every distinct
image once and [`MMIBDataCollator`] feeds the cached vectors to the model as `image_features`.

The cache on disk is a folder of shards, built to hold millions of images:

- each shard is a safetensors file with `features` `(n, D)` (fp32) and `keys` `(n, 32)` (uint8), the sha256 of the
  image files' bytes, plus `unreadable_keys` for files that exist but cannot be decoded; its metadata holds the
  vision fingerprint (see `vision_fingerprint`), the row count and the sha256 of its tensors' bytes;
- images are keyed by content, so a renamed or copied file hits the cache;
- shards are written to a temporary file and renamed, so a killed build leaves complete shards only; a later build
  resumes from them. A shard whose size does not match its header (truncated) or whose bytes do not match its
  checksum is reported, deleted and rebuilt by `build`, and refused with an error naming it by `load`;
- a build holds an exclusive lock on the folder (`fcntl.flock`), so two processes building the same cache take turns
  and the second finds the first one's shards;
- reading memory-maps the shards: only the index (28 bytes per image) is in memory; a lookup reads its rows.
"""

from ..vision_towers_mmib import BOOKKEEPING_FIELDS, vision_settings
from .fingerprint import vision_fingerprint
from .shards import FORMAT, SHARD_GLOB, CorruptShardError, FeatureShard, content_key, write_shard
from .store import ImageFeatureStore, prediction_feature_lookup

__all__ = [
    "BOOKKEEPING_FIELDS",
    "FORMAT",
    "SHARD_GLOB",
    "CorruptShardError",
    "FeatureShard",
    "ImageFeatureStore",
    "content_key",
    "prediction_feature_lookup",
    "vision_fingerprint",
    "vision_settings",
    "write_shard",
]
