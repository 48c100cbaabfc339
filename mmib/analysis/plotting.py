"""Every figure of the analyses, drawn with matplotlib's Agg backend (no display needed)."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

# The paper's Fig. 4 colours: orange = β_V varied, green = β_T varied, blue = both varied together.
SERIES_COLOURS = {"beta_vision": "tab:orange", "beta_text": "tab:green", "both": "tab:blue"}
TYPE_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:orange", "tab:brown", "tab:pink")
MODALITY_MARKERS = {"text": "o", "image": "^"}


def save_figure(figure: plt.Figure, stem: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Saves `figure` as `stem.<format>` for each format, closes it, and returns the files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{extension}") for extension in formats]
    for path in paths:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return paths


def plot_beta_sweep(points: Sequence, labels: Mapping[str, str], stem: Path) -> list[Path]:
    """
    Fig. 4 of the paper: test F1 (× 100, mean ± std over seeds) against β, one curve per series, the β values
    evenly spaced on the x axis as in the paper. `points` are [`~mmib.analysis.beta_sweep.SweepPoint`]s.
    """
    betas = sorted({point.beta for point in points})
    position = {beta: index for index, beta in enumerate(betas)}
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    for series, colour in SERIES_COLOURS.items():
        series_points = sorted((point for point in points if point.series == series), key=lambda point: point.beta)
        if not series_points:
            continue
        means, stds = zip(*(point.mean_std("test") for point in series_points))
        axes.errorbar(
            [position[point.beta] for point in series_points],
            100 * np.array(means),
            yerr=100 * np.array(stds),
            color=colour,
            marker="o",
            capsize=3,
            label=labels[series],
        )
    axes.set_xticks(range(len(betas)), [f"{beta:g}" for beta in betas])
    axes.set_xlabel("β")
    axes.set_ylabel("test F1 (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, stem, ("png", "svg"))


def plot_contributions(
    words: Sequence[str],
    word_scores: Sequence[float],
    images: Sequence[tuple[str, Image.Image]],
    image_scores: Sequence[float],
    stem: Path,
    title: str = "",
) -> list[Path]:
    """
    Contribution scores of one post: a heat strip over the words (Â^T) and a coloured box over the image and over
    each crop (Â^V), each panel labelled with its score. Each modality has its own colour scale, centred on 0.
    """
    num_panels = max(len(images), 1)
    figure = plt.figure(figsize=(max(6.0, 0.75 * len(words), 2.2 * num_panels), 4.2))
    strip = figure.add_axes((0.03, 0.72, 0.94, 0.14))
    text_norm = _centred_norm(word_scores)
    colormap = colormaps["coolwarm"]
    strip.imshow(np.asarray(word_scores, dtype=float)[None, :], cmap=colormap, norm=text_norm, aspect="auto")
    for index, word in enumerate(words):
        strip.text(index, 0, word, ha="center", va="center", fontsize=9, rotation=0 if len(words) < 14 else 60)
    strip.set_xticks(range(len(words)), [f"{score:.2g}" for score in word_scores], fontsize=7)
    strip.set_yticks([])
    strip.set_title(title or "contribution scores", fontsize=10)
    image_norm = _centred_norm(image_scores)
    width = 0.94 / num_panels
    for index, ((name, image), score) in enumerate(zip(images, image_scores)):
        axes = figure.add_axes((0.03 + index * width, 0.05, width * 0.9, 0.55))
        axes.imshow(image)
        axes.add_patch(
            Rectangle(
                (0, 0),
                image.width - 1,
                image.height - 1,
                fill=False,
                linewidth=5,
                edgecolor=colormap(image_norm(score)),
            )
        )
        axes.set_title(f"{name}: {score:.3g}", fontsize=8)
        axes.axis("off")
    return save_figure(figure, stem)


def plot_object_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[int]],
    scores: Sequence[float],
    labels: Sequence[str],
    stem: Path,
    title: str = "",
    image_score: float | None = None,
) -> list[Path]:
    """
    The paper's Fig. 3: the post's image with each object's box coloured by its contribution score (Â^V, the
    colour scale of [`plot_contributions`], centred on 0 over the image and the objects) and labelled
    `"query: score"`; the whole image's own score, if given, colours the frame.
    """
    colormap = colormaps["coolwarm"]
    norm = _centred_norm(list(scores) + ([] if image_score is None else [image_score]))
    figure, axes = plt.subplots(figsize=(6.0, 6.0 * image.height / max(image.width, 1) + 0.6))
    axes.imshow(image)
    if image_score is not None:
        frame = Rectangle((0, 0), image.width - 1, image.height - 1, fill=False, linewidth=4)
        frame.set_edgecolor(colormap(norm(image_score)))
        axes.add_patch(frame)
    for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
        colour = colormap(norm(score))
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=3, edgecolor=colour))
        axes.text(x0, y0, f"{label}: {score:.3g}", fontsize=8, va="bottom", color="white", backgroundcolor=colour)
    axes.set_title(title or "object contribution scores", fontsize=10)
    axes.axis("off")
    return save_figure(figure, stem)


def _centred_norm(scores: Sequence[float]) -> Normalize:
    values = np.asarray(scores, dtype=float)
    bound = float(np.abs(values).max()) if values.size else 1.0
    bound = bound or 1.0
    return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)


def plot_modality_gap(panels: Sequence[dict], type_names: Sequence[str], stem: Path) -> list[Path]:
    """
    Fig. 5 of the paper: one t-SNE panel per checkpoint, colour = entity type, marker = modality (o entity in the
    text, ^ object in the image). Each panel dict holds `title`, `coordinates` `(n, 2)`, `modalities` and `types`
    (one per point) and `gap` (shown in the title).
    """
    figure, axes_row = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for axes, panel in zip(axes_row[0], panels):
        coordinates = np.asarray(panel["coordinates"])
        modalities, types = np.asarray(panel["modalities"]), np.asarray(panel["types"])
        for type_index, type_name in enumerate(type_names):
            for modality, marker in MODALITY_MARKERS.items():
                chosen = (types == type_name) & (modalities == modality)
                if chosen.any():
                    axes.scatter(
                        *coordinates[chosen].T,
                        s=18,
                        marker=marker,
                        color=TYPE_COLOURS[type_index % len(TYPE_COLOURS)],
                        alpha=0.75,
                        label=f"{type_name} ({'entity' if modality == 'text' else 'object'})",
                    )
        axes.set_title(f"{panel['title']}\nmodality gap {panel['gap']:.2f}", fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
    axes_row[0][-1].legend(fontsize="x-small", loc="best")
    return save_figure(figure, stem, ("png", "svg"))
