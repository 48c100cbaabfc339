"""mmib.features.shards: a safetensors file that is not a feature shard is refused."""

import pytest
import torch

from mmib.features import ImageFeatureStore


def test_load_rejects_a_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "shard-weights.safetensors"))
    with pytest.raises(ValueError, match="not an MMIB image feature shard"):
        ImageFeatureStore.load(str(tmp_path))
    with pytest.raises(ValueError, match="holds no MMIB image feature shard"):
        ImageFeatureStore.load(str(tmp_path / "empty"))
