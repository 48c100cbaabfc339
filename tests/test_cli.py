"""`mmib` as a table of subcommands: every row parses, `mmib train` reaches the training parser, unknown flags are
refused except where they are training flags, importing the command line loads no command's stack; `mmib predict`
on a file and on a single post."""

import argparse
import json
import subprocess
import sys

import pytest

from mmib import cli
from mmib.cli import _parser
from mmib.cli import main as cli_main
from mmib.word_splitting_mmib import split_words
from prediction_checkpoints import (
    POSTS,
    read_jsonl,
    write_input,
)


@pytest.mark.parametrize("name", [name for name, command in cli.COMMANDS.items() if command.add_arguments])
def test_every_command_of_the_table_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mmib {name} ")
    assert (cli.TRAINING_EPILOG in " ".join(out.split())) == cli.COMMANDS[name].passes_training_flags


def test_main_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        assert name in out and command.help.split()[0] in out


def test_mmib_train_help_is_the_training_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmib train") and "--text_model_name_or_path" in out and "--beta_text" in out


def test_rows_get_their_arguments_and_only_training_commands_take_unknown_flags(monkeypatch):
    calls = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("value")
        parser.add_argument("--seeds", nargs="+", type=int)

    def run(args, rest):
        calls.append((args.command, args.value, args.seeds, rest))

    monkeypatch.setitem(cli.COMMANDS, "probe", cli.Command("A probe.", run, add_arguments))
    monkeypatch.setitem(cli.COMMANDS, "probe-train", cli.Command("A probe.", run, add_arguments, True))
    cli.main(["probe", "x", "--seeds", "1", "2"])
    # --seed is a training flag, not an abbreviation of --seeds.
    cli.main(["probe-train", "y", "--seeds", "3", "--seed", "9", "--bf16", "auto"])
    assert calls == [("probe", "x", [1, 2], []), ("probe-train", "y", [3], ["--seed", "9", "--bf16", "auto"])]
    with pytest.raises(SystemExit, match="mmib probe: unrecognized arguments: --seed 9"):
        cli.main(["probe", "x", "--seed", "9"])


def test_a_row_without_arguments_gets_the_raw_argument_list(monkeypatch):
    calls = []
    monkeypatch.setitem(cli.COMMANDS, "raw", cli.Command("Own parser.", lambda args, rest: calls.append((args, rest))))
    cli.main(["raw", "--anything", "goes", "--help"])
    assert calls == [(None, ["--anything", "goes", "--help"])]


def test_importing_the_command_line_loads_no_command():
    code = (
        "import sys, mmib.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('mmib.training', 'mmib.batch_prediction', "
        "'mmib.analysis', 'mmib.data', 'mmib.features'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["mmib", "mmib.cli"])
def test_python_dash_m_runs_the_command_line(module):
    result = subprocess.run([sys.executable, "-m", module, "predict", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: mmib predict")


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
