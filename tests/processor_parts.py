"""A tiny word-piece tokenizer, an image processor and the BIO label ids for the processor tests."""

from transformers import BertTokenizer, ConvNextImageProcessor

ID2LABEL = dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]))

LABEL2ID = {label: index for index, label in ID2LABEL.items()}


def build_tokenizer(**kwargs) -> BertTokenizer:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += "john smith visit ##s ##ed ##ing new york london i love the city rt @ # ! festival of voice".split()
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, **kwargs)


def build_image_processor() -> ConvNextImageProcessor:
    return ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
