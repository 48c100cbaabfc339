"""Applying checkpoints: word splitting, entity offsets and scores, NER -> RE, call forms, JSON-lines files, CLI."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (
    AVX2_FLAGS,
    AVX512_FLAGS,
    SHARED_DATA,
    accelerate_cpu_launcher,
    fake_cpu_flags,
    fake_cuda_devices,
    make_image,
)
from mmib import MMIBPredictor
from mmib.cli import main as cli_main
from mmib.training.collator import MMIBDataCollator
from mmib.data import load_jsonl, load_twitter_ner
from mmib.batch_prediction import StrictModeError, predict_file
from mmib.predictor_mmib import DTYPES, resolve_dtype
from mmib.word_splitting_mmib import split_words
from prediction_checkpoints import RELATIONS, save_ner_checkpoint, save_re_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "twitter2017-sample"
POSTS = [
    "RT @john: John Smith visits London and Paris!",
    "i love the city #london http://t.co/x1 :)",
    "new post : blackburn festival of voice 2017",
]


@pytest.fixture(scope="module")
def ner_path(tmp_path_factory) -> str:
    return save_ner_checkpoint(tmp_path_factory.mktemp("ner"))


@pytest.fixture(scope="module")
def re_path(tmp_path_factory) -> str:
    return save_re_checkpoint(tmp_path_factory.mktemp("re"))


@pytest.fixture(scope="module")
def predictor(ner_path) -> MMIBPredictor:
    return MMIBPredictor.from_pretrained(ner_path, dtype="float32", device="cpu", batch_size=2)


# --- word splitter -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        (
            "RT @JayKenMinaj: Me at http://t.co/Z3neVBQ7vF!",
            ["RT", "@JayKenMinaj", ":", "Me", "at", "http://t.co/Z3neVBQ7vF!"],
        ),
        ("Trump's #MAGA rally, 10,000 fans...", ["Trump", "'", "s", "#MAGA", "rally", ",", "10,000", "fans", "..."]),
        (
            "great 2-1 win :) w/ @bob \u2764\ufe0f\U0001f602",
            ["great", "2-1", "win", ":)", "w/", "@bob", "\u2764", "\ufe0f", "\U0001f602"],
        ),
        ("a 19-year-old (AT&T) &amp; me…", ["a", "19-year-old", "(", "AT&T", ")", "&amp", ";", "me", "…"]),
        ("May 21, 2017 in N.Y.", ["May", "21,", "2017", "in", "N", ".", "Y", "."]),
    ],
)
def test_split_words_follows_the_data_conventions_with_offsets(text, words):
    split = split_words(text)
    assert [word for word, _, _ in split] == words
    assert all(text[start:end] == word for word, start, end in split)


def test_split_words_round_trips_the_twitter_splits():
    """The measured round-trip shares (benchmarks/word_splitter_roundtrip.py); Twitter-2015's own tokenizer left
    punctuation attached in ~3% of posts (`no!`, `Services.`), which a splitter that splits punctuation cannot redo."""
    from mmib.data.twitter import _read_conll

    minimum = {"twitter2015": 0.97, "twitter2017": 0.999}
    for name, share in minimum.items():
        files = [SHARED_DATA / name / split for split in ("train.txt", "valid.txt", "test.txt")]
        if not all(path.is_file() for path in files):
            pytest.skip(f"{name} text splits not found under {SHARED_DATA}")
        posts = [post.words for path in files for post in _read_conll(path)]
        same = sum([word for word, _, _ in split_words(" ".join(words))] == words for words in posts)
        assert same / len(posts) >= share, (name, same / len(posts))


# --- predictor -----------------------------------------------------------------------------------------------------


def test_entities_carry_offsets_into_the_raw_text_and_crf_span_probabilities(predictor):
    results = predictor(POSTS)
    assert [result["id"] for result in results] == [0, 1, 2]
    entities = [entity for result in results for entity in result["entities"]]
    assert entities, "the biased tiny model should find entities"
    for text, result in zip(POSTS, results):
        assert result["text"] == text
        split = split_words(text)
        assert result["words"] == [word for word, _, _ in split]
        for entity in result["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]
            assert entity["start"] == split[entity["word_start"]][1]
            assert entity["end"] == split[entity["word_end"] - 1][2]
            assert 0.0 < entity["score"] <= 1.0
    # A one-word entity's score is the CRF marginal of its tag at that word.
    inputs = predictor.processor([result["words"] for result in results])
    with torch.no_grad():
        outputs = predictor.model(**inputs)
        marginals = predictor.model.crf.marginals(outputs.logits.float(), inputs["word_index"] >= 0)
    label2id = {label: index for index, label in predictor.model.config.id2label.items()}
    single = [
        (index, e) for index, r in enumerate(results) for e in r["entities"] if e["word_end"] - e["word_start"] == 1
    ]
    assert single
    for index, entity in single:
        tag = label2id[f"B-{entity['type']}"]
        if outputs.predictions[index, entity["word_start"]] != tag:
            tag = label2id[f"I-{entity['type']}"]
        assert entity["score"] == pytest.approx(float(marginals[index, entity["word_start"], tag]), abs=1e-5)


# White space only or dropped by the tokenizer: Twitter-2015 holds U+00A0, Twitter-2017 U+FE0F, U+200B, U+200D, U+0092
# and U+00AD; an emoji and a space stand for the rest. The JSON-lines reader also takes "" (not a CoNLL token).
ODD_WORDS = ["john", "\u00a0", "\u200b", "london", "\ufe0f", "\u200d", "\x92", "\xad", " ", "\U0001f600", "paris"]


@pytest.mark.parametrize("reader", ["conll", "jsonl"])
def test_prediction_tags_every_word_that_training_takes(reader, ner_path, predictor, tmp_path):
    """The odd words of the benchmarks go through the training path (reader, processor, collator, model) and
    through prediction (a `words` post, and a JSON-lines file as `mmib predict` reads it): every word gets a tag, the
    same in both."""
    words = ODD_WORDS + ([""] if reader == "jsonl" else [])
    tags = ["B-PER", "O", "O", "B-LOC", "O", "O", "O", "O", "O", "O", "B-LOC"] + ([] if reader == "conll" else ["O"])
    labels = list(predictor.model.config.id2label.values())
    if reader == "conll":
        post = "IMGID:1\n" + "".join(f"{word}\t{tag}\n" for word, tag in zip(words, tags)) + "\n"
        folder = tmp_path / "twitter2015"
        folder.mkdir()
        for split in ("train", "valid", "test"):
            (folder / f"{split}.txt").write_text(post, encoding="utf-8", newline="")
        rows = list(load_twitter_ner(folder, label_names=labels)["train"])
    else:
        (tmp_path / "train.jsonl").write_text(json.dumps({"words": words, "tags": tags}) + "\n", encoding="utf-8")
        rows = list(load_jsonl({"train": tmp_path / "train.jsonl"}, label_names=labels)["train"])
    assert rows[0]["words"] == words
    batch = MMIBDataCollator(predictor.processor)(rows)
    assert batch["word_index"].shape == (1, len(words)) and (batch["word_index"] >= 0).all()
    assert batch["labels"][0].tolist() == [labels.index(tag) for tag in tags]
    with torch.no_grad():
        outputs = predictor.model(**batch)
    assert torch.isfinite(outputs.loss)
    trained_tags = [predictor.model.config.id2label[label] for label in outputs.predictions[0].tolist()]
    assert len(trained_tags) == len(words)

    result = predictor({"words": words})
    assert "error" not in result, result
    assert result["words"] == words and result["tags"] == trained_tags
    (tmp_path / "posts.jsonl").write_text(json.dumps({"id": "odd", "words": words}) + "\n", encoding="utf-8")
    summary = predict_file(
        predictor, str(tmp_path / "posts.jsonl"), str(tmp_path / "out.jsonl"), num_workers=0, quiet=True
    )
    assert not summary.errors
    assert read_jsonl(tmp_path / "out.jsonl") == [{**result, "id": "odd"}]


def test_one_post_a_list_and_a_lazy_iterable(predictor):
    single = predictor({"text": POSTS[0], "image": make_image(0), "id": "x"})
    assert isinstance(single, dict) and single["id"] == "x"
    consumed = []

    def endless():
        for index in itertools.count():
            consumed.append(index)
            yield POSTS[index % len(POSTS)]

    first = list(itertools.islice(predictor(endless()), 3))
    assert [result["words"] for result in first] == [result["words"] for result in predictor(POSTS)]
    assert len(consumed) <= 4  # read batch by batch (batch_size 2), not to the end


def test_bad_posts_give_error_rows(predictor, tmp_path):
    results = predictor([{"text": "  "}, {"words": ["a", 3]}, {"text": "london", "image": str(tmp_path / "no.jpg")}])
    assert [set(result) for result in results] == [{"id", "error"}] * 3
    assert "no words" in results[0]["error"] and "'words' must be" in results[1]["error"]
    assert "no.jpg" in results[2]["error"]


def test_joint_ner_to_relations(ner_path, re_path):
    kept = MMIBPredictor.from_pretrained(ner_path, relation_model=re_path, dtype="float32", keep_none=True)
    pruned = MMIBPredictor.from_pretrained(ner_path, relation_model=re_path, dtype="float32")
    post = {"text": POSTS[0], "image": make_image(1)}
    full, without_none = kept(post), pruned(post)
    count = len(full["entities"])
    assert count >= 2
    assert [(r["head"], r["tail"]) for r in full["relations"]] == list(itertools.permutations(range(count), 2))
    assert without_none["relations"] == [r for r in full["relations"] if r["label"] != "None"]
    # The score is the softmax probability of the label, from the relation model on the marked pair.
    relation = full["relations"][0]
    head, tail = (full["entities"][relation[key]] for key in ("head", "tail"))
    inputs = kept.relation_processor(
        full["words"],
        images=make_image(1),
        head_spans=(head["word_start"], head["word_end"]),
        tail_spans=(tail["word_start"], tail["word_end"]),
    )
    with torch.no_grad():
        probabilities = kept.relation_model(**inputs).logits.softmax(-1)[0]
    assert relation["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    assert relation["label"] == RELATIONS[int(probabilities.argmax())]
    capped = MMIBPredictor.from_pretrained(ner_path, relation_model=re_path, keep_none=True, max_pairs_per_post=1)(
        post
    )
    assert len(capped["relations"]) == 1 and capped["pairs_left_out"] == count * (count - 1) - 1


def test_relation_checkpoint_alone_takes_spans_from_the_rows(re_path):
    predictor = MMIBPredictor.from_pretrained(re_path, dtype="float32")
    result = predictor({"words": ["john", "smith", "visits", "london"], "head": [0, 2], "tail": [3, 4]})
    assert result["label"] in RELATIONS.values() and 0 < result["score"] <= 1
    assert "error" in predictor({"words": ["john"], "head": [0, 1]})


@pytest.mark.parametrize(
    "flags, native",
    [
        ((*AVX512_FLAGS, "avx512_bf16"), True),  # Cooper Lake, Zen 4
        ((*AVX2_FLAGS, "amx_tile", "amx_bf16", "amx_int8"), True),  # AMX (the branch on its own)
        (AVX512_FLAGS, False),  # Skylake-X, Cascade Lake: oneDNN reports bf16, but emulates it
        (AVX2_FLAGS, False),
    ],
    ids=["avx512_bf16", "amx", "avx512_only", "avx2"],
)
def test_auto_dtype_on_the_cpu_is_bf16_only_with_avx512_bf16_or_amx(flags, native, monkeypatch, ner_path):
    fake_cpu_flags(monkeypatch, flags)
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", torch.device("cpu"))[0] == expected
    predictor = MMIBPredictor.from_pretrained(ner_path, device="cpu")
    assert predictor.dtype == expected and predictor.dtype_reason.startswith("auto")
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), (torch.bfloat16, torch.bfloat16)):
        assert resolve_dtype(name, torch.device("cpu")) == (dtype, "requested")
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16", torch.device("cpu"))


def test_auto_dtype_on_cuda_is_bf16_only_where_the_requested_device_has_it_natively(monkeypatch):
    # A T4 (7.5, bf16 emulated) and an A10 (8.6, native); the current device is the T4.
    fake_cuda_devices(monkeypatch, [(7, 5), (8, 6)], current=0)
    assert torch.cuda.is_bf16_supported()  # the emulation that `auto` must not count
    assert resolve_dtype("auto", torch.device("cuda", 1))[0] == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda", 0))[0] == torch.float32
    assert resolve_dtype("auto", torch.device("cuda"))[0] == torch.float32
    fake_cuda_devices(monkeypatch, [(7, 5), (8, 6)], current=1)
    assert resolve_dtype("auto", torch.device("cuda", 0))[0] == torch.float32
    assert resolve_dtype("auto", torch.device("cuda"))[0] == torch.bfloat16
    # The CPU of a GPU machine answers for itself.
    fake_cpu_flags(monkeypatch, AVX2_FLAGS)
    assert resolve_dtype("auto", torch.device("cpu"))[0] == torch.float32


def test_bf16_and_fp32_agree_on_the_shipped_test_posts(ner_path):
    """bf16 autocast against fp32 on the 102 shipped test posts, on any CPU (bf16 is requested, not left to `auto`:
    an emulating CPU computes the same bf16 products, only slower).

    The issue's bar (the same entities on >= 99% of the posts) holds for the trained MiniLM demo checkpoint (102 of
    102, docs/prediction.md), which a test cannot train. A random tiny model has near ties between labels everywhere,
    which bf16 rounding flips at a rate of a few words in a thousand; its classifier is scaled up so that entities
    appear, and the bar here is per word tag (>= 99%) and per post (>= 95%)."""
    posts = [{"words": json.loads(line)["words"]} for line in open(SAMPLE / "test.jsonl", encoding="utf-8")]
    results = {}
    for dtype in ("float32", "bfloat16"):
        predictor = MMIBPredictor.from_pretrained(ner_path, dtype=dtype, device="cpu", batch_size=16)
        assert predictor.dtype == DTYPES[dtype]
        with torch.no_grad():
            predictor.model.classifier.weight *= 20
        results[dtype] = predictor(posts)

    def spans(result):
        return [(e["word_start"], e["word_end"], e["type"]) for e in result["entities"]]

    pairs = list(zip(results["float32"], results["bfloat16"]))
    assert sum(len(spans(result)) for result in results["float32"]) > 50
    same_posts = sum(spans(a) == spans(b) for a, b in pairs)
    same_tags = sum(x == y for a, b in pairs for x, y in zip(a["tags"], b["tags"], strict=True))
    num_tags = sum(len(a["tags"]) for a, _ in pairs)
    assert same_tags / num_tags >= 0.99, (same_tags, num_tags)
    assert same_posts / len(posts) >= 0.95, same_posts
    # bf16 did run: the entity scores of the agreeing posts moved by bf16 rounding, not more.
    score_gaps = [
        abs(x["score"] - y["score"])
        for a, b in pairs
        if spans(a) == spans(b)
        for x, y in zip(a["entities"], b["entities"])
    ]
    assert 0 < max(score_gaps) < 0.1, max(score_gaps)


# --- files and the command line ------------------------------------------------------------------------------------


def write_input(folder: Path) -> Path:
    make_image(3).save(folder / "post.png")
    lines = [
        json.dumps({"id": "a", "text": POSTS[0], "image": "post.png"}),
        "{not json",
        "",
        json.dumps({"words": ["john", "smith"], "crops": ["post.png"]}),
        json.dumps({"text": POSTS[1], "image": "missing.jpg"}),
        json.dumps({"text": " "}),
        json.dumps({"text": POSTS[2]}),
    ]
    path = folder / "posts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_file_prediction_keeps_order_reports_errors_and_matches_the_api(predictor, tmp_path):
    input_path = write_input(tmp_path)
    summaries = {}
    for workers in (0, 2):
        summaries[workers] = predict_file(
            predictor,
            str(input_path),
            str(tmp_path / f"out{workers}.jsonl"),
            batch_size=2,
            num_workers=workers,
            quiet=True,
        )
    rows = read_jsonl(tmp_path / "out0.jsonl")
    assert rows == read_jsonl(tmp_path / "out2.jsonl")
    assert [row["id"] for row in rows] == ["a", 2, 4, 5, 6, 7]
    assert [("error" in row) for row in rows] == [False, True, False, True, True, False]
    assert "line 2: malformed JSON" in rows[1]["error"] and "missing.jpg" in rows[3]["error"]
    assert summaries[2].posts == 6 and dict(summaries[2].errors) == {"malformed JSON": 1, "image": 1, "empty post": 1}
    expected = predictor({"id": "a", "text": POSTS[0], "image": str(tmp_path / "post.png")})
    assert rows[0] == expected
    with pytest.raises(StrictModeError, match="line 2"):
        predict_file(
            predictor,
            str(input_path),
            str(tmp_path / "strict.jsonl"),
            batch_size=2,
            num_workers=0,
            quiet=True,
            strict=True,
        )
    assert len(read_jsonl(tmp_path / "strict.jsonl")) == 2


def test_cli_file_and_single_post(ner_path, tmp_path, capsys):
    input_path = write_input(tmp_path)
    cli_main(
        [
            "predict",
            ner_path,
            "--input",
            str(input_path),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--batch_size",
            "3",
            "--dtype",
            "float32",
            "--num_workers",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert "dtype float32 (requested)" in err and "6 posts, 3 predicted, 3 errors" in err
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 6
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "predict",
                ner_path,
                "--input",
                str(input_path),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--strict",
                "--quiet",
            ]
        )
    assert exit_info.value.code == 1
    cli_main(["predict", ner_path, "--text", POSTS[0], "--image", str(tmp_path / "post.png"), "--quiet"])
    single = json.loads(capsys.readouterr().out)
    assert single["words"] == [word for word, _, _ in split_words(POSTS[0])]


@pytest.mark.slow
def test_two_processes_write_the_same_output_as_one(ner_path, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1: two real gloo ranks."""
    input_path = tmp_path / "many.jsonl"
    input_path.write_text("".join(json.dumps({"text": POSTS[i % 3] + f" {i}"}) + "\n" for i in range(23)))
    common = ["predict", ner_path, "--input", str(input_path), "--batch_size", "2", "--dtype", "float32"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "mmib.cli", *common, "--output", str(tmp_path / "one.jsonl")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launch = accelerate_cpu_launcher()
    two = subprocess.run(
        [*launch, "-m", "mmib.cli", *common, "--output", str(tmp_path / "two.jsonl")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "23 posts, 23 predicted, 0 errors on 2 processes" in two.stderr, two.stderr[-3000:]
    assert read_jsonl(tmp_path / "two.jsonl") == read_jsonl(tmp_path / "one.jsonl")
    assert not list(tmp_path.glob("two.jsonl.part*"))
