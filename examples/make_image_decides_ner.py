"""Build a small synthetic multimodal NER set in which only the image tells the entity type.

Every post is one sentence frame (e.g. "everyone is talking about <NAME> tonight") around one made-up name of one
or two words. Frames and names are drawn independently of the type, so the words show *where* the entity is but
not *what* it is. The type -- PER, LOC or ORG -- decides the picture only:

- PER: a warm (red to orange) background with a few large discs;
- LOC: horizontal bands in greens and blues (a landscape);
- ORG: a grey-violet background with a grid of small squares (a logo / building facade).

Hues, positions, sizes and pixel noise vary at random inside each family. In a fraction of the posts
(`--shape_only`, default 0.25) every colour is drawn from one palette shared by all types, so that only the shapes
tell the family: the task is then not solved by the mean colour alone, yet a frozen, even randomly initialised,
small ResNet still separates the families well. Each post also gets two crops
(random square regions of its image), written as their own PNG files. A text-only model can therefore find the
entity spans but can only guess their type (about one in three right); a model whose image pathway works can read
the type from the picture.

Output (deterministic for a given --seed), in the JSON-lines layout of `mmib.data.load_jsonl`:

    <output_dir>/{train,validation,test}.jsonl
    <output_dir>/images/<id>.png, <output_dir>/images/<id>_crop<k>.png

    python examples/make_image_decides_ner.py --output_dir examples/image-decides-ner --seed 0
"""

import argparse
import random
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

from mmib.data import bio_label_names, ner_features, write_jsonl

ENTITY_TYPES = ("PER", "LOC", "ORG")
FRAMES = (
    "everyone is talking about {} tonight",
    "{} is trending again today",
    "new photo of {} from this morning",
    "cannot believe what happened with {}",
    "we finally saw {} after a long wait",
    "big news about {} just came in",
    "{} was all over my timeline",
    "here is {} in one picture",
    "so many people showed up for {}",
    "a quiet afternoon with {}",
    "rt : look at {} right now",
    "{} again , what a day",
)
SYLLABLES = ("ka", "lo", "ven", "dri", "mar", "tes", "ul", "bro", "zan", "qui", "fel", "ro", "sa", "nek", "thor")
SHARED_PALETTE = ((40, 120, 200), (200, 90, 60), (120, 160, 90), (90, 80, 140), (220, 200, 120))
IMAGE_SIZE = 64
CROP_SIZE = 32
NUM_CROPS = 2
DEFAULT_SIZES = {"train": 240, "validation": 60, "test": 60}


def make_name(rng: random.Random) -> list[str]:
    """One or two capitalised made-up words, with no hint of a type."""
    return [
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        for _ in range(rng.choice((1, 1, 2)))
    ]


def draw_image(entity_type: str, rng: random.Random, shape_only: bool = False) -> Image.Image:
    """A 64x64 picture of the type's visual family, with random variation inside it; with `shape_only`, its
    colours come from a palette shared by all types."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    draw = ImageDraw.Draw(image)
    if shape_only:
        jitter = lambda value: rng.choice(SHARED_PALETTE)[rng.randint(0, 2)]  # noqa: E731
    else:
        jitter = lambda value: max(0, min(255, value + rng.randint(-30, 30)))  # noqa: E731
    if entity_type == "PER":
        draw.rectangle([0, 0, IMAGE_SIZE, IMAGE_SIZE], fill=(jitter(220), jitter(90), jitter(40)))
        for _ in range(rng.randint(1, 3)):
            x, y, radius = rng.randint(8, 56), rng.randint(8, 56), rng.randint(8, 18)
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius], fill=(jitter(250), jitter(190), jitter(150))
            )
    elif entity_type == "LOC":
        top = 0
        while top < IMAGE_SIZE:
            height = rng.randint(6, 16)
            colour = rng.choice(((40, 150, 60), (60, 120, 200), (90, 170, 120)))
            draw.rectangle([0, top, IMAGE_SIZE, top + height], fill=tuple(jitter(value) for value in colour))
            top += height
    else:
        draw.rectangle([0, 0, IMAGE_SIZE, IMAGE_SIZE], fill=(jitter(120), jitter(110), jitter(150)))
        step = rng.randint(10, 16)
        square = rng.randint(4, step - 3)
        offset = rng.randint(0, step - 1)
        for x in range(offset, IMAGE_SIZE, step):
            for y in range(offset, IMAGE_SIZE, step):
                draw.rectangle([x, y, x + square, y + square], fill=(jitter(60), jitter(40), jitter(110)))
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-12, 13, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def make_split(split: str, size: int, rng: random.Random, image_dir: Path, shape_only: float) -> dict[str, list]:
    """`size` posts of one split as columns; writes their images and crops into `image_dir`."""
    columns = {"id": [], "words": [], "ner_tags": [], "image": [], "crops": []}
    for index in range(size):
        post_id = f"{split}-{index:04d}"
        entity_type = ENTITY_TYPES[index % len(ENTITY_TYPES)]
        name = make_name(rng)
        before, after = rng.choice(FRAMES).split("{}")
        before_words, after_words = before.split(), after.split()
        entity_tags = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(name) - 1)
        image = draw_image(entity_type, rng, shape_only=rng.random() < shape_only)
        image_path = image_dir / f"{post_id}.png"
        image.save(image_path)
        crop_paths = []
        for crop_index in range(NUM_CROPS):
            left, top = rng.randint(0, IMAGE_SIZE - CROP_SIZE), rng.randint(0, IMAGE_SIZE - CROP_SIZE)
            crop_path = image_dir / f"{post_id}_crop{crop_index}.png"
            image.crop((left, top, left + CROP_SIZE, top + CROP_SIZE)).save(crop_path)
            crop_paths.append(str(crop_path.absolute()))
        columns["id"].append(post_id)
        columns["words"].append(before_words + name + after_words)
        columns["ner_tags"].append(["O"] * len(before_words) + entity_tags + ["O"] * len(after_words))
        columns["image"].append(str(image_path.absolute()))
        columns["crops"].append(crop_paths)
    # Types cycle PER, LOC, ORG above so that every split is balanced; the order of posts is then shuffled.
    order = list(range(size))
    rng.shuffle(order)
    return {key: [values[position] for position in order] for key, values in columns.items()}


def build(
    output_dir: Path, seed: int = 0, sizes: dict[str, int] = DEFAULT_SIZES, shape_only: float = 0.25
) -> dict[str, int]:
    """Writes the three splits and their images; returns the number of posts per split."""
    rng = random.Random(seed)
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_names = bio_label_names(ENTITY_TYPES)
    features = ner_features(label_names)
    counts = {}
    for split, size in sizes.items():
        columns = make_split(split, size, rng, image_dir, shape_only)
        columns["ner_tags"] = [[label_names.index(tag) for tag in tags] for tags in columns["ner_tags"]]
        counts[split] = write_jsonl(
            datasets.Dataset.from_dict(columns, features=features), output_dir / f"{split}.jsonl"
        )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="examples/image-decides-ner")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape_only", type=float, default=0.25, help="Fraction of posts with shared colours.")
    for split, size in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}_size", type=int, default=size)
    args = parser.parse_args()
    sizes = {split: getattr(args, f"{split}_size") for split in DEFAULT_SIZES}
    for split, count in build(Path(args.output_dir), args.seed, sizes, args.shape_only).items():
        print(f"{split}: {count} posts")


if __name__ == "__main__":
    main()
