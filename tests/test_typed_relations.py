"""Typed NER -> RE: the (head type, tail type) signatures a relation checkpoint records, the pairs they skip, the
flag that runs every pair, and the gold-span RE paths that never consult them."""

import itertools

import pytest
from datasets import Dataset
from transformers import TrainingArguments

from conftest import make_image
from mmib import MMIBConfig, MMIBForRelationClassification, MMIBPredictor, MMIBProcessor
from mmib.data.labels import relation_type_signatures
from mmib.data.rows import re_features
from mmib.relation_stage_mmib import RelationStage
from mmib.training.collator import MMIBDataCollator
from mmib.training.evaluation import build_compute_metrics
from mmib.training.trainer import MMIBTrainer
from prediction_checkpoints import POSTS, RELATIONS, save_re_checkpoint


def test_signatures_are_read_from_the_relations_the_training_rows_carry():
    rows = ["None", "/per/loc/place_of_birth", "/per/loc/place_of_birth", "/org/org/subsidiary", "/OTHER/per/x"]
    # By hand: three relations occur; "None" has no signature; OTHER is spelt misc, as MNRE does.
    assert relation_type_signatures(rows) == [["misc", "per"], ["org", "org"], ["per", "loc"]]
    assert relation_type_signatures(["None", "None"]) == []
    assert relation_type_signatures(["no_relation", "/per/per/peer"], none_label="no_relation") == [["per", "per"]]
    # A relation whose name spells no types: nothing can be recorded (every pair runs).
    assert relation_type_signatures(["/per/per/peer", "founded_by"]) is None
    assert relation_type_signatures(["/per/per"]) is None


def test_the_config_saves_and_loads_the_signatures(tmp_path):
    config = MMIBConfig(relation_type_signatures=[["per", "loc"]])
    config.save_pretrained(tmp_path)
    assert MMIBConfig.from_pretrained(tmp_path).relation_type_signatures == [["per", "loc"]]
    assert MMIBConfig().relation_type_signatures is None


@pytest.fixture(scope="module")
def typed_re_paths(tmp_path_factory) -> dict[str, str]:
    """The same relation weights saved without a record, recording PER -> LOC only, and recording nothing."""
    paths = {"untyped": save_re_checkpoint(tmp_path_factory.mktemp("untyped"))}
    for name, signatures in (("per_loc", [["per", "loc"]]), ("empty", [])):
        path = save_re_checkpoint(tmp_path_factory.mktemp(name))
        config = MMIBConfig.from_pretrained(path)
        config.relation_type_signatures = signatures
        config.save_pretrained(path)
        paths[name] = path
    return paths


def _predict(ner_path, relation_path, monkeypatch, **kwargs):
    """One NER -> RE result on POSTS[0], and how many pairs went through the relation model."""
    classified = []
    original = RelationStage.classify_pairs

    def counting(self, pairs):
        classified.append(len(pairs))
        return original(self, pairs)

    monkeypatch.setattr(RelationStage, "classify_pairs", counting)
    predictor = MMIBPredictor.from_pretrained(
        ner_path, relation_model=relation_path, dtype="float32", keep_none=True, **kwargs
    )
    return predictor({"text": POSTS[0], "image": make_image(1)}), sum(classified)


def test_only_pairs_of_a_recorded_signature_are_classified(ner_path, typed_re_paths, monkeypatch):
    full, full_passes = _predict(ner_path, typed_re_paths["untyped"], monkeypatch)
    typed, typed_passes = _predict(ner_path, typed_re_paths["per_loc"], monkeypatch)
    types = [entity["type"] for entity in full["entities"]]
    assert {"PER", "LOC"} <= set(types)
    everything = list(itertools.permutations(range(len(types)), 2))
    per_loc = [(h, t) for h, t in everything if (types[h], types[t]) == ("PER", "LOC")]
    assert full_passes == len(everything) and "pairs_skipped_by_type" not in full
    assert typed_passes == len(per_loc)
    assert typed["pairs_skipped_by_type"] == len(everything) - len(per_loc)
    # The classified pairs get exactly what they get among all pairs; the skipped ones are not listed.
    assert typed["relations"] == [r for r in full["relations"] if (r["head"], r["tail"]) in per_loc]
    assert typed["entities"] == full["entities"]


def test_all_pairs_restores_every_pair(ner_path, typed_re_paths, monkeypatch):
    full, _ = _predict(ner_path, typed_re_paths["untyped"], monkeypatch)
    every, passes = _predict(ner_path, typed_re_paths["per_loc"], monkeypatch, all_pairs=True)
    assert every == full and passes == len(full["relations"])


def test_an_empty_record_skips_every_pair_without_a_pass_and_caps_count_only_classified_pairs(
    ner_path, typed_re_paths, monkeypatch, caplog
):
    result, passes = _predict(ner_path, typed_re_paths["empty"], monkeypatch)
    count = len(result["entities"])
    assert passes == 0 and result["relations"] == []
    assert result["pairs_skipped_by_type"] == count * (count - 1) and "pairs_left_out" not in result
    assert "name no entity of type LOC, MISC, ORG, PER" in caplog.text
    capped, passes = _predict(ner_path, typed_re_paths["per_loc"], monkeypatch, max_pairs_per_post=2)
    types = [entity["type"] for entity in capped["entities"]]
    per_loc = sum(1 for h, t in itertools.permutations(types, 2) if (h, t) == ("PER", "LOC"))
    assert passes == 2 and capped["pairs_left_out"] == per_loc - 2


def test_relation_checkpoint_on_given_spans_ignores_the_signatures(typed_re_paths):
    post = {"words": ["john", "smith", "visits", "london"], "head": [0, 2], "tail": [3, 4]}
    untyped = MMIBPredictor.from_pretrained(typed_re_paths["untyped"], dtype="float32")(post)
    assert MMIBPredictor.from_pretrained(typed_re_paths["empty"], dtype="float32")(post) == untyped


class Tripwire(list):
    """Signatures that fail the test if anything reads them."""

    def __iter__(self):
        raise AssertionError("the gold-entity evaluation read the type signatures")

    def __len__(self):
        raise AssertionError("the gold-entity evaluation read the type signatures")


def test_gold_entity_relation_evaluation_never_consults_the_signatures(typed_re_paths, tmp_path):
    """Relation F1 with gold entities (the training run's evaluation) is the same whatever the record says."""
    rows = [
        {"id": str(i), "words": words, "head_span": head, "tail_span": tail, "relation": label}
        for i, (words, head, tail, label) in enumerate(
            [
                (["john", "smith", "visits", "london"], [0, 2], [3, 4], 1),
                (["john", "meets", "smith"], [0, 1], [2, 3], 2),
                (["paris", "and", "london"], [0, 1], [2, 3], 0),
                (["smith", "in", "paris"], [0, 1], [2, 3], 1),
            ]
        )
    ]
    features = re_features(list(RELATIONS.values()))
    dataset = Dataset.from_list([row | {"image": None, "crops": []} for row in rows], features=features)
    processor = MMIBProcessor.from_pretrained(typed_re_paths["untyped"])
    metrics = []
    for record in (None, Tripwire([["per", "loc"]])):
        model = MMIBForRelationClassification.from_pretrained(typed_re_paths["untyped"]).eval()
        model.config.relation_type_signatures = record
        trainer = MMIBTrainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False
            ),
            eval_dataset=dataset,
            data_collator=MMIBDataCollator(processor),
            processing_class=processor,
            compute_metrics=build_compute_metrics("re", dataset, model.config.id2label),
        )
        output = trainer.predict(dataset)
        scores = {key: value for key, value in output.metrics.items() if "time" not in key and "second" not in key}
        metrics.append((output.predictions.tolist(), scores))
    assert metrics[0] == metrics[1]
    assert {"test_f1", "test_precision", "test_recall"} <= set(metrics[0][1])
