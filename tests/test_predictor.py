"""MMIBPredictor: entity offsets and CRF span scores, words training takes, call forms, NER -> RE, dtypes."""

import itertools
import json

import pytest
import torch

from conftest import (
    AVX2_FLAGS,
    AVX512_FLAGS,
    REPO,
    fake_cpu_flags,
    fake_cuda_devices,
    make_image,
)
from mmib import MMIBPredictor
from mmib.batch_prediction import predict_file
from mmib.checkpoints_mmib import DTYPES, load_checkpoint, resolve_dtype
from mmib.data import load_jsonl, load_twitter_ner
from mmib.training.collator import MMIBDataCollator
from mmib.word_splitting_mmib import split_words
from prediction_checkpoints import (
    POSTS,
    RELATIONS,
    agreement,
    ner_model_and_processor,
    read_jsonl,
    save_ner_model,
    save_re_checkpoint,
)

SAMPLE = REPO / "examples" / "twitter2017-sample"


@pytest.fixture(scope="module")
def re_path(tmp_path_factory) -> str:
    return save_re_checkpoint(tmp_path_factory.mktemp("re"))


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
    capped = MMIBPredictor.from_pretrained(
        ner_path, relation_model=re_path, dtype="float32", keep_none=True, max_pairs_per_post=1
    )(post)
    assert len(capped["relations"]) == 1 and capped["pairs_left_out"] == count * (count - 1) - 1
    # Per-call options (one request of a server) give the rows of predictors built with them, then are undone.
    with pruned.options(keep_none=True):
        assert pruned(post) == full
    with pruned.options(keep_none=True, max_pairs_per_post=1, batch_size=1):
        assert pruned(post) == capped
    assert pruned(post) == without_none and pruned.batch_size == pruned.relations.batch_size == 32
    with (
        pytest.raises(ValueError, match="need a relation model"),
        MMIBPredictor.from_pretrained(ner_path).options(keep_none=True),
    ):
        pass


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


def test_auto_dtype_is_fp32_where_the_kernels_are_capped_below_avx512_bf16(monkeypatch):
    fake_cpu_flags(monkeypatch, (*AVX512_FLAGS, "avx512_bf16"))
    assert resolve_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_dtype("auto", torch.device("cpu"))[0] == torch.float32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert resolve_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16
    # ATEN_CPU_CAPABILITY=avx2 shows as ATen's kernel choice.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert resolve_dtype("auto", torch.device("cpu"))[0] == torch.float32


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

    agree = agreement(results["float32"], results["bfloat16"])
    assert agree.entities > 50
    assert agree.tags >= 0.99 and agree.posts >= 0.95, agree
    # bf16 did run: the entity scores of the agreeing posts moved by bf16 rounding, not more.
    assert 0 < max(agree.score_gaps) < 0.1, max(agree.score_gaps)


def sample_posts_with_images(count: int) -> list[dict]:
    """The first `count` shipped test posts, each with an image and two crops (generated pictures)."""
    rows = [json.loads(line) for line in open(SAMPLE / "test.jsonl", encoding="utf-8")][:count]
    return [
        {"words": row["words"], "image": make_image(index, (48, 40)), "crops": [make_image(index + 1), make_image(0)]}
        for index, row in enumerate(rows)
    ]


@pytest.mark.parametrize("native", [True, False], ids=["native_bf16", "no_native_bf16"])
def test_loading_lays_out_the_weights_for_the_dtype(native, monkeypatch, tmp_path):
    """`dtype="auto"`: with native bf16 the weights of the linear, convolution and embedding layers are cast to bf16
    once at loading, normalisations and the CRF stay fp32; without it every weight stays fp32. Either way the
    convolution weights are channels-last. The predictions (tags, entity scores) are those of the checkpoint as
    saved with only its embeddings cast, under the same autocast: casting the linear and convolution weights once
    computes what autocast computes from fp32 ones, and channels-last weights change no result."""
    model, processor = ner_model_and_processor()
    # Normalisations as after training (a fresh one's 1 and 0 are exact in bf16, so casting it would change nothing).
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm | torch.nn.BatchNorm2d):
                for tensor in (*module.parameters(), *module.buffers()):
                    if tensor.is_floating_point():
                        tensor.add_(0.1 * torch.rand(tensor.shape, generator=generator))
    ner_path = save_ner_model(model, processor, tmp_path)
    fake_cpu_flags(monkeypatch, (*AVX512_FLAGS, "avx512_bf16") if native else AVX2_FLAGS)
    predictor = MMIBPredictor.from_pretrained(ner_path, device="cpu", batch_size=8)
    dtype = torch.bfloat16 if native else torch.float32
    assert predictor.dtype == dtype
    cast_types = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
    modules = dict(predictor.model.named_modules())
    cast = {name for name, module in modules.items() if isinstance(module, cast_types)}
    assert {type(modules[name]) for name in cast} == set(cast_types)
    kept = {name.rsplit(".", 1)[0] for name, parameter in predictor.model.named_parameters()} - cast
    assert {"crf", "mmib.text_model.embeddings.LayerNorm", "mmib.vision_model.embedder.embedder.normalization"} <= kept
    for name, parameter in predictor.model.named_parameters():
        assert parameter.dtype == (dtype if name.rsplit(".", 1)[0] in cast else torch.float32), name
        if parameter.dim() == 4:
            assert parameter.is_contiguous(memory_format=torch.channels_last), name
    model, processor = load_checkpoint(ner_path, dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.to(dtype)
    as_saved = MMIBPredictor(model, processor, compute_dtype=dtype, batch_size=8)
    posts = sample_posts_with_images(24)
    # The vision features themselves (a random tower moves the entity scores by little more than 1e-6).
    pixels = processor.image_processor([post["image"] for post in posts], return_tensors="pt")["pixel_values"]
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=native):
        features = [
            tested.mmib.get_image_features(pixels.to(tested.mmib.vision_model.dtype)).float()
            for tested in (predictor.model, model)
        ]
    torch.testing.assert_close(*features, rtol=0, atol=1e-6)
    expected, results = as_saved(posts), predictor(posts)
    assert sum(len(result["entities"]) for result in expected) > 10
    for result, reference in zip(results, expected, strict=True):
        assert result["tags"] == reference["tags"]
        scores = [entity["score"] for entity in result["entities"]]
        assert scores == pytest.approx([entity["score"] for entity in reference["entities"]], abs=1e-6)
