"""The coloured-square detector of `square_detector_code.py` saved as a remote-code detector folder, and images with
coloured squares whose boxes are known by hand."""

import json
import shutil
from pathlib import Path

from PIL import Image

CODE = Path(__file__).with_name("square_detector_code.py")
RED, GREEN = (255, 0, 0), (0, 255, 0)
# Class names of the two colours (the detector's `id2label`).
LABELS = {0: "red", 1: "green"}


def save_square_detector(folder: Path, shortest_edge: int = 48, longest_edge: int = 64, do_resize: bool = True) -> str:
    """A detector folder loaded with `trust_remote_code=True`: class `red` finds red squares, `green` green ones.
    Its processor resizes as DETR's (`shortest_edge`, `longest_edge`), or with `do_resize=False` keeps each image's
    size, so that boxes are exact to the pixel."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CODE, folder / CODE.name)
    from square_detector_code import SquareDetector, SquareDetectorConfig

    config = SquareDetectorConfig(colours=[RED, GREEN], id2label=LABELS)
    config.auto_map = {
        "AutoConfig": "square_detector_code.SquareDetectorConfig",
        "AutoModelForObjectDetection": "square_detector_code.SquareDetector",
    }
    SquareDetector(config).save_pretrained(folder)
    processor = {
        "image_processor_type": "SquareDetectorImageProcessor",
        "auto_map": {"AutoImageProcessor": "square_detector_code.SquareDetectorImageProcessor"},
        "shortest_edge": shortest_edge,
        "longest_edge": longest_edge,
        "do_resize": do_resize,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return str(folder)


def squares_image(
    size: tuple[int, int], squares: list[tuple[tuple[int, int, int], tuple[int, int, int, int]]], mode: str = "RGB"
) -> Image.Image:
    """A grey image of `size` with filled boxes `(colour, (x0, y0, x1, y1))` (x1, y1 exclusive)."""
    image = Image.new("RGB", size, (128, 128, 128))
    for colour, box in squares:
        image.paste(colour, box)
    return image.convert(mode) if mode != "RGB" else image
