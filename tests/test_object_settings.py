"""mmib/object_settings_mmib.py: one settings object behind `mmib extract-objects`, the training flags, the record
kept with a checkpoint and the detection cache key."""

import dataclasses

import pytest

from mmib import cli
from mmib.object_extraction_mmib import MMIBObjectExtractor
from mmib.object_settings_mmib import DETECTION_FIELDS, RECORDED_FIELDS, ObjectExtractionSettings
from mmib.training.arguments import MMIBTrainingArguments, parse_arguments
from mmib.training.run import crops_per_post, extract_crops

FIELDS = {item.name: item.default for item in dataclasses.fields(ObjectExtractionSettings)}
# A value other than the default for every field, as a flag's words.
CHANGED = {
    "detector": ("some/detector", ["some/detector"]),
    "revision": ("v2", ["v2"]),
    "trust_remote_code": (True, []),
    "query_rule": ("categories", ["categories"]),
    "categories": (["cat", "dog"], ["cat", "dog"]),
    "max_queries": (5, ["5"]),
    "threshold": (0.125, ["0.125"]),
    "text_threshold": (0.5, ["0.5"]),
    "nms_iou": (0.25, ["0.25"]),
    "min_size": (3, ["3"]),
    "input_size": ([300, 500], ["300", "500"]),
    "num_crops": (2, ["2"]),
    "batch_size": (3, ["3"]),
    "device": ("cpu", ["cpu"]),
    "dtype": ("bfloat16", ["bfloat16"]),
    "cache_dir": ("/tmp/detections", ["/tmp/detections"]),
}
SOURCE = ["extract-objects", "posts.jsonl", "--output_dir", "out"]


def flags(prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    return [word for name, (_, words) in CHANGED.items() if name not in skip for word in [f"--{prefix}{name}", *words]]


def test_the_changed_values_cover_every_field_and_differ_from_the_defaults():
    assert set(CHANGED) == set(FIELDS)
    assert all(CHANGED[name][0] != default for name, default in FIELDS.items())
    assert set(RECORDED_FIELDS) <= set(FIELDS) and set(DETECTION_FIELDS) == set(RECORDED_FIELDS) | {"dtype"}


def test_extract_objects_has_a_flag_per_field_with_its_default(tmp_path):
    parser = cli._parser()
    defaults = parser.parse_args([*SOURCE, "--detector", "d"])
    assert {name: getattr(defaults, name) for name in FIELDS} == {**FIELDS, "detector": "d"}
    assert ObjectExtractionSettings.from_namespace(defaults) == ObjectExtractionSettings(detector="d")
    changed = parser.parse_args([*SOURCE, *flags("")])
    assert ObjectExtractionSettings.from_namespace(changed) == ObjectExtractionSettings(
        **{name: value for name, (value, _) in CHANGED.items()}
    )
    with pytest.raises(SystemExit):
        parser.parse_args(SOURCE)  # --detector is required


def test_training_has_an_object_flag_per_field_with_its_default_and_the_models_crops(tmp_path):
    base = ["--output_dir", str(tmp_path)]
    model_args, data_args, _ = parse_arguments(base)
    assert {name: getattr(data_args, f"object_{name}") for name in FIELDS if name != "num_crops"} == {
        name: default for name, default in FIELDS.items() if name != "num_crops"
    }
    assert not hasattr(data_args, "object_num_crops"), "the crops are the model's: --num_crops"
    model_args, data_args, _ = parse_arguments([*base, *flags("object_", skip=("num_crops",)), "--num_crops", "2"])
    num_crops = crops_per_post(model_args, "ner")
    settings = ObjectExtractionSettings.from_namespace(data_args, prefix="object_", num_crops=num_crops)
    assert settings == ObjectExtractionSettings(**{name: value for name, (value, _) in CHANGED.items()})


class Built(Exception):
    """Raised by the stand-in loader with the settings an entry point built."""


@pytest.fixture
def built_settings(monkeypatch):
    def stand_in(settings):
        raise Built(settings)

    monkeypatch.setattr(MMIBObjectExtractor, "from_settings", staticmethod(stand_in))


def test_both_entry_points_load_the_extractor_from_these_settings(built_settings, tmp_path):
    with pytest.raises(Built) as from_cli:
        cli.main([*SOURCE, *flags("")])
    expected = ObjectExtractionSettings(**{name: value for name, (value, _) in CHANGED.items()})
    assert from_cli.value.args[0] == expected
    _, data_args, _ = parse_arguments(["--output_dir", str(tmp_path), *flags("object_", skip=("num_crops",))])
    training_args = MMIBTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    with pytest.raises(Built) as from_training:
        extract_crops(None, data_args, 2, training_args)
    assert from_training.value.args[0] == expected
    # Unset, the cache and the device follow each command's output and device.
    with pytest.raises(Built) as defaults:
        cli.main([*SOURCE, "--detector", "d", "--device", "cpu"])
    assert defaults.value.args[0].cache_dir.endswith("out/cache")


def test_recorded_settings_round_trip_and_old_records_load():
    settings = ObjectExtractionSettings(**{name: value for name, (value, _) in CHANGED.items()})
    record = settings.to_dict()
    assert list(record) == list(RECORDED_FIELDS)
    # What a checkpoint records never says where or how the detector runs.
    assert {"trust_remote_code", "device", "dtype", "batch_size", "cache_dir"}.isdisjoint(record)
    restored = ObjectExtractionSettings.from_dict(record, dtype="bfloat16")
    assert restored.to_dict() == record and restored.dtype == "bfloat16"
    # A record of an earlier version (fewer keys) loads with the defaults.
    assert ObjectExtractionSettings.from_dict({"detector": "d", "num_crops": 2}) == ObjectExtractionSettings(
        detector="d", num_crops=2
    )
    with pytest.raises(ValueError, match="Unknown object-extraction settings"):
        ObjectExtractionSettings.from_dict({**record, "thresold": 0.1})
    with pytest.raises(ValueError, match="recorded settings"):
        ObjectExtractionSettings.from_dict(record, threshold=0.9)
    with pytest.raises(ValueError, match="callable"):
        ObjectExtractionSettings(query_rule=lambda words, head, tail: ["cat"]).to_dict()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"query_rule": "nouns"}, "query_rule"),
        ({"max_queries": 0}, "max_queries"),
        ({"num_crops": -1}, "num_crops"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"min_size": True}, "min_size"),
        ({"nms_iou": 1.5}, "nms_iou"),
        ({"dtype": "int8"}, "dtype"),
        ({"categories": "cat"}, "categories"),
        ({"input_size": [800]}, "input_size"),
        ({"input_size": [800, 600]}, "input_size"),
        ({"input_size": [0, 600]}, "input_size"),
        ({"input_size": [600.5, 800]}, "input_size"),
    ],
)
def test_bad_values_are_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        ObjectExtractionSettings(**changes)
