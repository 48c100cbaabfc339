"""`pipeline(model=folder, trust_remote_code=True)` from a saved NER checkpoint, in a process without mmib."""

import json
import os
import textwrap

import pytest

from conftest import make_image, run_without_mmib
from mmib import MMIBPredictor

TEXT = "RT @john: John Smith visits London and Paris!"

PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from transformers import pipeline
    folder, image_path = sys.argv[1], sys.argv[2]
    tagger = pipeline(model=folder, trust_remote_code=True)
    assert type(tagger).__name__ == "MMIBTokenClassificationPipeline", type(tagger)
    assert "transformers_modules" in type(tagger).__module__, type(tagger).__module__
    text = sys.argv[3]
    print(json.dumps({
        "path": tagger({"text": text, "image": image_path}),
        "pil": tagger({"text": text, "image": Image.open(image_path)}),
        "text_only": tagger(text),
    }))
    """
)


def test_checkpoint_records_the_pipeline_and_carries_its_code(ner_path):
    config = json.load(open(os.path.join(ner_path, "config.json")))
    assert config["custom_pipelines"]["mmib-ner"]["impl"] == "pipeline_mmib.MMIBTokenClassificationPipeline"
    carried = {
        "pipeline_mmib.py",
        "predictor_mmib.py",
        "checkpoints_mmib.py",
        "posts_mmib.py",
        "word_splitting_mmib.py",
    }
    assert carried <= set(os.listdir(ner_path))


def test_pipeline_from_a_saved_folder_in_a_process_without_mmib(ner_path, tmp_path):
    image_path = tmp_path / "post.png"
    make_image(5).save(image_path)
    result = run_without_mmib(PIPELINE_SCRIPT, ner_path, str(image_path), TEXT, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])

    predictor = MMIBPredictor.from_pretrained(ner_path, dtype="float32")
    for key, image in (("path", str(image_path)), ("pil", str(image_path)), ("text_only", None)):
        expected = predictor({"text": TEXT, "image": image})["entities"]
        assert expected, "the biased tiny model should find entities"
        got = outputs[key]
        assert [set(entity) for entity in got] == [{"entity_group", "score", "word", "start", "end"}] * len(got)
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
            (e["type"], e["text"], e["start"], e["end"]) for e in expected
        ]
        assert [e["score"] for e in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
        assert all(TEXT[e["start"] : e["end"]] == e["word"] for e in got)
