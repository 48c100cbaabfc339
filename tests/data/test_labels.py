"""mmib.data.labels: BIO label names and their order."""

from mmib.data import (
    bio_label_names,
)


def test_bio_label_order_puts_known_types_first():
    assert bio_label_names(["ZZZ", "MISC", "EVT", "PER", "OTHER", "LOC"]) == [
        "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-OTHER", "I-OTHER",
        "B-EVT", "I-EVT", "B-ZZZ", "I-ZZZ",
    ]  # fmt: skip
