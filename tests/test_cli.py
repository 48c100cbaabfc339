"""mmib.cli: `mmib predict` on a file and on a single post, and the training flags passed through by the analyses."""

import json

import pytest

from mmib.cli import _parser
from mmib.cli import main as cli_main
from mmib.word_splitting_mmib import split_words
from prediction_checkpoints import (
    POSTS,
    read_jsonl,
    write_input,
)


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


def test_cli_passes_unknown_flags_to_training_and_keeps_seed_apart_from_seeds():
    args, rest = _parser().parse_known_args(
        ["ablate", "c.yaml", "--seeds", "1", "2", "--output_dir", "d", "--seed", "9", "--text_model_name_or_path", "t"]
    )
    assert args.seeds == [1, 2] and args.output_dir == "d"
    assert rest == ["--seed", "9", "--text_model_name_or_path", "t"]
