"""Tiny DETR detectors with a known constant prediction, NER checkpoints that record one as their extractor, and the
images and counters the object-extraction tests share (tests of the extractor, the extraction job, the predictor, the
CLI, training, the analyses and the app)."""

import math
from pathlib import Path

import torch
from PIL import Image
from real_size_detectors import detr_config, detr_image_processor
from transformers import DetrForObjectDetection

from mmib.object_extraction_mmib import MMIBObjectExtractor
from prediction_checkpoints import ner_model_and_processor, save_ner_model

# DETR's constant prediction: (cx, cy, w, h) relative to the image; the box leaves the image at the bottom.
BOX = (0.5, 0.8, 0.3, 0.6)
CLASSES = {0: "cat", 1: "dog", 2: "person"}


def save_detr(path: Path, box=BOX, class_logits=(2.0, 0.0, 0.0, 0.0)) -> str:
    """
    A tiny DETR whose every query predicts `box` with softmax(`class_logits`) (last logit: no object); `box=None`
    keeps random heads, widened so that the boxes depend on the pixels and differ between queries.
    """
    torch.manual_seed(0)
    config = detr_config("tiny", id2label=CLASSES)
    model = DetrForObjectDetection(config)
    with torch.no_grad():
        if box is None:
            # Initialised small, the random weights give every query nearly one box.
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, 0.5)
        else:
            last = model.bbox_predictor.layers[-1]
            last.weight.zero_()
            last.bias.copy_(torch.logit(torch.tensor(box)))
            model.class_labels_classifier.weight.zero_()
            model.class_labels_classifier.bias.copy_(torch.tensor(class_logits))
    model.save_pretrained(path)
    detr_image_processor("tiny").save_pretrained(path)
    return str(path)


def detr_score(class_logits=(2.0, 0.0, 0.0, 0.0)) -> float:
    return max(torch.softmax(torch.tensor(class_logits), 0)[:-1].tolist())


def hand_box(size: tuple[int, int], box=BOX) -> tuple[int, int, int, int]:
    """The module's rule written out: corners, floor/ceil outwards, clipped to the image."""
    width, height = size
    cx, cy, w, h = box
    x0, y0, x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height
    return max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1))


def noise_image(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    channels = len(mode)
    pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=generator, dtype=torch.uint8)
    return Image.frombytes(mode, size, pixels.numpy().tobytes())


def count_calls(extractor: MMIBObjectExtractor) -> list[int]:
    """Counts the detector's forward calls (a list so the caller sees the updates)."""
    calls = [0]
    forward = extractor.model.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    extractor.model.forward = counted
    return calls


def exif_rotated_jpeg(path: Path, size: tuple[int, int]) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    noise_image(size, seed=3).save(path, format="JPEG", exif=exif, quality=95)
    return path


def save_extracting_checkpoint(folder: Path, object_extraction: dict | None) -> str:
    """A tiny NER checkpoint (2 crop slots) whose processor records `object_extraction` (the settings of an
    extractor, `MMIBObjectExtractor.to_dict()`; `None`: no extractor, as after training on a dataset's crops)."""
    model, processor = ner_model_and_processor()
    processor.object_extraction = object_extraction
    return save_ner_model(model, processor, folder)
