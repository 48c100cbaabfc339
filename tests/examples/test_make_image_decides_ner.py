"""The synthetic set of examples/make_image_decides_ner.py: deterministic, balanced, loadable, and the type is in
the image only (a bag-of-words classifier stays near chance, one on small image thumbnails does not)."""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, load_script
from mmib.data import load_jsonl

SCRIPT = REPO / "examples" / "make_image_decides_ner.py"
SIZES = {"train": 150, "validation": 30, "test": 60}


def load_generator():
    return load_script(SCRIPT, "make_image_decides_ner")


def digest(folder: Path) -> str:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return hashlib.sha256(b"".join(path.name.encode() + path.read_bytes() for path in files)).hexdigest()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic") / "set"
    assert load_generator().build(folder, seed=0, sizes=SIZES) == SIZES
    return folder


def entity_types(dataset) -> list[str]:
    """The type of each post's one entity."""
    names = dataset.features["ner_tags"].feature.names
    return [next(names[tag][2:] for tag in tags if names[tag].startswith("B-")) for tags in dataset["ner_tags"]]


def test_deterministic_by_seed(generated, tmp_path):
    generator = load_generator()
    generator.build(tmp_path / "same", seed=0, sizes=SIZES)
    generator.build(tmp_path / "other", seed=1, sizes=SIZES)
    assert digest(tmp_path / "same") == digest(generated)
    assert digest(tmp_path / "other") != digest(generated)


def test_splits_load_balanced_with_one_entity_image_and_two_crops(generated):
    data = load_jsonl({split: str(generated / f"{split}.jsonl") for split in SIZES})
    assert {split: len(dataset) for split, dataset in data.items()} == SIZES
    for split, dataset in data.items():
        assert Counter(entity_types(dataset)) == {name: SIZES[split] // 3 for name in ("PER", "LOC", "ORG")}
        assert all(Path(image).is_file() for image in dataset["image"])
        assert all(len(crops) == 2 and all(Path(crop).is_file() for crop in crops) for crops in dataset["crops"])


def test_type_is_readable_from_the_image_only(generated):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    data = load_jsonl({split: str(generated / f"{split}.jsonl") for split in ("train", "test")})
    train_types, test_types = entity_types(data["train"]), entity_types(data["test"])
    words = CountVectorizer(token_pattern=r"\S+", lowercase=False)
    text_train = words.fit_transform([" ".join(post) for post in data["train"]["words"]])
    text_test = words.transform([" ".join(post) for post in data["test"]["words"]])
    text_accuracy = LogisticRegression(max_iter=2000).fit(text_train, train_types).score(text_test, test_types)

    def thumbnails(dataset) -> np.ndarray:
        return np.stack(
            [np.asarray(Image.open(path).resize((16, 16)), dtype=float).ravel() / 255 for path in dataset["image"]]
        )

    image_classifier = LogisticRegression(max_iter=2000).fit(thumbnails(data["train"]), train_types)
    image_accuracy = image_classifier.score(thumbnails(data["test"]), test_types)
    # Chance is 1/3: with 60 test posts, 0.5 is far above what words alone can reach.
    assert text_accuracy < 0.5
    assert image_accuracy > 0.8
