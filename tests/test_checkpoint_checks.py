"""Loading refuses what is not an MMIB checkpoint, and a processor whose tokenizer does not fit the model."""

import pytest
import torch
from test_building import SMALL, towers  # noqa: F401 (the fixture)

from mmib import (
    MMIBConfig,
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBModel,
    build_model_and_processor,
    load_model_and_processor,
)


@pytest.mark.parametrize("model_class", [MMIBModel, MMIBForTokenClassification, MMIBForRelationClassification])
@pytest.mark.parametrize(
    ("tower", "found"),
    [("text", "'bert' checkpoint \\(BertModel\\)"), ("vision", "'resnet' checkpoint \\(ResNetModel\\)")],
)
def test_from_pretrained_on_another_model_type_says_what_it_found_and_what_to_do(towers, model_class, tower, found):  # noqa: F811
    with pytest.raises(ValueError, match=rf"{found}, not an MMIB one .*build_model_and_processor.*from_text_vision"):
        model_class.from_pretrained(towers[tower])
    with pytest.raises(ValueError, match="not an MMIB one"):
        MMIBConfig.from_pretrained(towers[tower])


def test_a_saved_mmib_checkpoint_still_loads(towers, tmp_path):  # noqa: F811
    model, processor = build_model_and_processor("ner", towers["text"], towers["vision"], ["O", "B-PER"], **SMALL)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = MMIBForTokenClassification.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_a_tokenizer_larger_than_the_embeddings_is_refused_at_load(towers, tmp_path):  # noqa: F811
    model, processor = build_model_and_processor("ner", towers["text"], towers["vision"], ["O", "B-PER"], **SMALL)
    processor.tokenizer.add_tokens(["brandnewword", "anotherone"])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    rows = model.get_input_embeddings().num_embeddings
    with pytest.raises(ValueError, match=rf"has {rows + 2} tokens but the model's text embeddings have {rows} rows"):
        load_model_and_processor(tmp_path)
    # Resized as the message says, the pair loads.
    model.resize_token_embeddings(len(processor.tokenizer))
    model.save_pretrained(tmp_path)
    loaded, _ = load_model_and_processor(tmp_path)
    assert loaded.get_input_embeddings().num_embeddings == rows + 2
