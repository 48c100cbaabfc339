"""`mmib predict-ray` takes every predictor option of `mmib predict` and hands it, unchanged, to the
`MMIBPredictor.from_pretrained` call of its actors (no Ray runtime: the stages are built and their actors constructed
in this process)."""

import argparse

import pytest

pytest.importorskip("ray")

from mmib import cli  # noqa: E402
from mmib.integrations import ray as ray_integration  # noqa: E402
from mmib.predictor_mmib import MMIBPredictor  # noqa: E402

# `mmib predict`'s options about the posts, the output and the data loader, not the predictor.
FILE_OPTIONS = {"help", "model", "input", "text", "words", "output", "image", "crops", "head", "tail"}
FILE_OPTIONS |= {"num_workers", "quiet", "strict"}


class Loaded(Exception):
    """Raised by the stand-in `from_pretrained` once it has recorded its arguments."""


class RecordedStages:
    """A stand-in `ray.data.Dataset` that records its `map_batches` stages."""

    def __init__(self):
        self.stages = []

    def map_batches(self, fn, *, fn_constructor_kwargs, **_):
        self.stages.append((fn, fn_constructor_kwargs))
        return self


def predictor_flag_sets() -> list[list[str]]:
    """
    Every predictor option of `mmib predict`, each with a value other than its default: one command line with all
    of them but the second and later options of a mutually exclusive group, then one with each of those alone.
    """
    parser = argparse.ArgumentParser()
    cli.COMMANDS["predict"].add_arguments(parser)
    excluded = {action.dest for group in parser._mutually_exclusive_groups for action in group._group_actions[1:]}
    together, alone = [], []
    for action in parser._actions:
        if action.dest in FILE_OPTIONS:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            flags = [flag]
        elif action.choices:
            flags = [flag, next(choice for choice in action.choices if choice != action.default)]
        elif action.type is int:
            flags = [flag, str(action.default + 3 if action.default is not None else 3)]
        else:
            flags = [flag, f"/given/{action.dest}"]
        if action.dest in excluded:
            alone.append(flags)
        else:
            together += flags
    return [together, *alone]


@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    """The arguments of every `MMIBPredictor.from_pretrained` call, which then stops the command."""
    calls = []

    def from_pretrained(model, **kwargs):
        calls.append({"model": model, **kwargs})
        raise Loaded

    monkeypatch.setattr(MMIBPredictor, "from_pretrained", from_pretrained)
    return calls


def run_predict(argv: list[str]) -> None:
    with pytest.raises(Loaded):
        cli.main(["predict", "runs/ner", "--input", "posts.jsonl", *argv])


def run_predict_ray(argv: list[str], monkeypatch) -> None:
    """`mmib predict-ray` up to the construction of its MMIB actor, which happens here instead of in Ray."""
    dataset = RecordedStages()
    monkeypatch.setattr(ray_integration.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray_integration.ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray_integration, "read_posts", lambda path, input_format: dataset)
    monkeypatch.setattr(ray_integration, "_configure_threads", lambda num_threads: None)

    def write_rows(stages, path, output_format):
        ((fn, kwargs),) = stages.stages
        fn(**kwargs)

    monkeypatch.setattr(ray_integration, "write_rows", write_rows)
    with pytest.raises(Loaded):
        cli.main(["predict-ray", "runs/ner", "--input", "posts.jsonl", "--output", "out", *argv])


def test_every_predictor_option_of_mmib_predict_reaches_the_predict_ray_actors(recorded, monkeypatch):
    run_predict([])
    defaults = recorded.pop()
    flag_sets = predictor_flag_sets()
    # Among them: the options predict-ray once lacked.
    assert {"--keep_none", "--all_pairs", "--device", "--backend", "--image_feature_cache"} <= set(flag_sets[0])
    for flags in flag_sets:
        run_predict(flags)
        run_predict_ray(flags, monkeypatch)
        predict, predict_ray = recorded[-2:]
        assert predict_ray == predict, flags
        # Each option given is an argument of its own that differs from its default.
        changed = {name for name, value in predict.items() if value != defaults[name]}
        assert len(changed) == len([flag for flag in flags if flag.startswith("--")]), (flags, changed)
