"""A fixed random batch for each head of a tiny MMIB model, shared by the model-convention and checkpoint tests."""

import torch

from conftest import IMAGE_SIZE, tiny_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification

NUM_SLOTS = 3  # 1 image + num_crops=2

RELATIONS = {0: "None", 1: "/per/loc/place_of_residence", 2: "/per/per/peer"}


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three posts: padded text, an absent crop, a post without any image (so one row has no attention keys)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 64, (3, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[attention_mask == 0] = 0
    labels = torch.randint(0, 9, (3, 4), generator=generator)
    word_index = torch.tensor([[1, 2, 4, 6], [1, 3, -1, -1], [1, 2, 3, 5]])
    labels[word_index < 0] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "word_index": word_index,
        "pixel_values": torch.randn(3, NUM_SLOTS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "image_mask": torch.tensor([[True, True, False], [False, False, False], [True, False, True]]),
        "labels": labels,
    }


def relation_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    batch = make_batch(seed)
    del batch["word_index"]
    batch["entity_positions"] = torch.tensor([[[1, 3], [4, 6]], [[1, 2], [3, 4]], [[0, 2], [5, 7]]])
    batch["labels"] = torch.tensor([0, 1, 2])
    return batch


HEADS = {
    "ner": (MMIBForTokenClassification, {}, make_batch),
    "re": (MMIBForRelationClassification, {"id2label": RELATIONS}, relation_batch),
}


def build(task: str, **config_kwargs):
    model_class, task_kwargs, batch_fn = HEADS[task]
    torch.manual_seed(0)
    return model_class(tiny_config(**task_kwargs, **config_kwargs)).eval(), batch_fn()


def three_post_batch(seed: int = 0, vocab_size: int = 64) -> dict[str, torch.Tensor]:
    """Three NER posts: the second padded after five tokens with two words, the third with one absent image slot."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (3, 8), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[2, 7:] = 0
    input_ids[attention_mask == 0] = 0
    word_index = torch.tensor([[1, 2, 4, 6], [1, 3, -1, -1], [1, 2, 3, 5]])
    labels = torch.randint(0, 9, (3, 4), generator=generator)
    labels[word_index < 0] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "word_index": word_index,
        "labels": labels,
        "pixel_values": torch.randn(3, NUM_SLOTS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "image_mask": torch.tensor([[True, True, False], [False, False, False], [True, False, True]]),
    }
