"""mmib.analysis.intermediates: the forward hooks capture the tensors of a hand forward of a tiny model."""

import torch

from mmib.analysis.intermediates import encoder_intermediates
from mmib.data import load_jsonl


def test_hooks_capture_the_tensors_of_a_hand_forward(checkpoint, posts_file, hand_tensors):
    _, model, processor = checkpoint
    rows = load_jsonl({"test": str(posts_file)})["test"]
    batch = processor(list(rows["words"]), images=list(rows["image"]), crops=list(rows["crops"]))
    captured = encoder_intermediates(model, batch)
    for name, tensor in hand_tensors(model, batch).items():
        torch.testing.assert_close(getattr(captured, name), tensor, msg=name)
