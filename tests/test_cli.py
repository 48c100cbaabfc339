"""`mmib` as a table of subcommands: every row parses, `mmib train` reaches the training parser, unknown flags are
refused except where they are training flags, and importing the command line loads no command's stack."""

import argparse
import subprocess
import sys

import pytest

from mmib import cli


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
