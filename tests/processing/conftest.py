"""The NER and RE processors the processor tests share (tiny word-piece tokenizer, 32-pixel images)."""

import pytest

from mmib import MMIBProcessor
from processor_parts import build_image_processor, build_tokenizer


@pytest.fixture
def ner_processor() -> MMIBProcessor:
    return MMIBProcessor(build_image_processor(), build_tokenizer(), task="ner", num_crops=2, max_length=32)


@pytest.fixture
def re_processor() -> MMIBProcessor:
    return MMIBProcessor(build_image_processor(), build_tokenizer(), task="re", num_crops=2, max_length=32)
