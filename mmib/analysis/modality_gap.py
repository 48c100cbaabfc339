"""The modality gap of the paper's Fig. 5: entity representations (Z^T at the entity's words) and object
representations (Z^V of the post's image and crops) of the same posts, drawn with t-SNE and coloured by entity
type, for one checkpoint or side by side for several (e.g. without and with L_ar), with a number for the gap.

The gap number is the distance between the two modality centroids divided by the root-mean-square distance of
the points to their own modality's centroid (pooled over both modalities): 0 when the clouds share a centre, and
large when they sit apart relative to their size. It is computed on the latents themselves, not on the t-SNE map.
"""

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..checkpoints_mmib import load_checkpoint
from ..data.registry import load_dataset, task_of
from ..data.rows import gold_ner_tags
from ..post_processing_mmib import entity_spans
from ..training.arguments import read_config_file
from ..training.collator import MMIBDataCollator
from .intermediates import encoder_intermediates
from .plotting import plot_modality_gap


@dataclass
class GapStatistics:
    """The gap between two point clouds: `gap = centroid_distance / sqrt((spread_text² + spread_image²) / 2)`,
    where each spread is the RMS distance of a modality's points to their centroid."""

    gap: float
    centroid_distance: float
    spread_text: float
    spread_image: float


def gap_statistics(text_points: np.ndarray, image_points: np.ndarray) -> GapStatistics:
    """The gap between `(n, d)` text points and `(m, d)` image points."""
    text_points, image_points = np.asarray(text_points, dtype=float), np.asarray(image_points, dtype=float)
    text_centre, image_centre = text_points.mean(axis=0), image_points.mean(axis=0)
    spread_text = float(np.sqrt(((text_points - text_centre) ** 2).sum(axis=1).mean()))
    spread_image = float(np.sqrt(((image_points - image_centre) ** 2).sum(axis=1).mean()))
    distance = float(np.linalg.norm(text_centre - image_centre))
    pooled = np.sqrt((spread_text**2 + spread_image**2) / 2)
    return GapStatistics(distance / pooled if pooled > 0 else float("inf"), distance, spread_text, spread_image)


def load_split(data: str, split: str, num_crops: int) -> datasets.Dataset:
    """One split of labelled NER posts: from a JSON-lines file, or from an `mmib train` YAML / JSON config
    (`dataset: jsonl` with `<split>_file`, or `twitter2015` / `twitter2017` with `data_dir`)."""
    if data.endswith(".jsonl"):
        return load_dataset("jsonl", files={split: data})[1][split]
    if not data.endswith((".yaml", ".yml", ".json")):
        raise ValueError(f"--data {data!r}: expected a .jsonl file or an `mmib train` config (.yaml/.json).")
    config = read_config_file(data)
    dataset = config.get("dataset", "twitter2017")
    if task_of(dataset, config.get("task", "ner")) != "ner":
        raise ValueError(f"{data}: dataset {dataset!r} has no NER entities (twitter2015, twitter2017 or jsonl).")
    files = None
    if dataset == "jsonl":
        key = f"{split}_file"
        if not config.get(key):
            raise ValueError(f"{data}: no {key} for split {split!r}.")
        files = {split: config[key]}
    media = {"image_dir": config.get("image_dir"), "num_crops": num_crops}
    return load_dataset(dataset, data_dir=config.get("data_dir"), files=files, **media)[1][split]


def collect_pairs(model, processor, dataset: datasets.Dataset, batch_size: int = 16) -> list[dict]:
    """
    One entity-object pair per gold entity of every post that has an image: the entity's Z^T averaged over its
    words (first sub-words), and the post's Z^V averaged over its present image slots, with the entity type.
    """
    gold = gold_ner_tags(dataset)
    collator = MMIBDataCollator(processor)
    pairs = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="representations", unit="batch"):
        rows = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        batch = collator([{key: row[key] for key in ("words", "image", "crops")} for row in rows])
        if "image_mask" not in batch or not batch["image_mask"].any():
            continue
        tensors = encoder_intermediates(model, batch)
        if tensors.vision_latents is None:
            raise ValueError("The checkpoint has no vision pathway (text-only model): there is no modality gap.")
        image_mask = batch["image_mask"].to(tensors.vision_latents.dtype)
        objects = (tensors.vision_latents * image_mask[:, :, None]).sum(1) / image_mask.sum(1, keepdim=True).clamp(
            min=1
        )
        for row_index, row in enumerate(rows):
            if not batch["image_mask"][row_index].any():
                continue
            word_index = batch["word_index"][row_index]
            for begin, end, entity_type in entity_spans(gold[start + row_index]):
                positions = [int(position) for position in word_index[begin:end] if position >= 0]
                if not positions:
                    continue
                pairs.append(
                    {
                        "id": row["id"],
                        "type": entity_type,
                        "entity": tensors.text_latents[row_index, positions].mean(0).numpy(),
                        "object": objects[row_index].numpy(),
                    }
                )
    return pairs


def tsne_coordinates(points: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE as in the paper (perplexity 10, 500 iterations), perplexity lowered for very few points."""
    from sklearn.manifold import TSNE

    perplexity = min(10.0, max(1.0, (len(points) - 1) / 3))
    return TSNE(perplexity=perplexity, max_iter=500, init="pca", random_state=seed).fit_transform(points)


def run_modality_gap(
    models: Sequence[str],
    data: str,
    output_dir: str | Path,
    split: str = "test",
    labels: Sequence[str] | None = None,
    max_pairs: int = 150,
    seed: int = 0,
) -> list[dict]:
    """
    For each checkpoint: its entity-object pairs on `split` of `data` (at most `max_pairs`, the same posts for
    every checkpoint, drawn with `seed`), the gap statistics and a t-SNE panel. Writes `modality_gap.json` and
    `modality_gap.png` / `.svg` to `output_dir`.

    Returns:
        One dict per checkpoint: `model`, `label`, `num_pairs` and the [`GapStatistics`] fields.
    """
    labels = list(labels) if labels else [Path(model).name for model in models]
    if len(labels) != len(models):
        raise ValueError(f"{len(models)} checkpoints but {len(labels)} labels.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results, panels, type_names = [], [], []
    for model_name, label in zip(models, labels):
        model, processor = load_checkpoint(model_name, task="ner")
        model.eval()
        pairs = collect_pairs(model, processor, load_split(data, split, processor.num_crops))
        if len(pairs) < 2:
            raise ValueError(f"{data} ({split}) has {len(pairs)} entities in posts with an image: too few to compare.")
        pairs = random.Random(seed).sample(pairs, min(max_pairs, len(pairs)))
        entities = np.stack([pair["entity"] for pair in pairs])
        objects = np.stack([pair["object"] for pair in pairs])
        statistics = gap_statistics(entities, objects)
        results.append({"model": model_name, "label": label, "num_pairs": len(pairs), **asdict(statistics)})
        types = [pair["type"] for pair in pairs]
        type_names += [name for name in dict.fromkeys(types) if name not in type_names]
        panels.append(
            {
                "title": label,
                "coordinates": tsne_coordinates(np.concatenate([entities, objects]), seed),
                "modalities": ["text"] * len(pairs) + ["image"] * len(pairs),
                "types": types + types,
                "gap": statistics.gap,
            }
        )
    plot_modality_gap(panels, type_names, output_dir / "modality_gap")
    (output_dir / "modality_gap.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results
