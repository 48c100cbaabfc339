"""
A deterministic object detector for the tests, behind transformers' closed-set detection API: it finds squares of
known colours in the pixels its image processor gives it.

Saved into a detector folder as remote code (`config.json` / `preprocessor_config.json` name these classes in their
`auto_map`), it is loaded by `AutoConfig`, `AutoModelForObjectDetection` and `AutoImageProcessor` with
`trust_remote_code=True` like any detector family, and `MMIBObjectExtractor` drives it through its closed-set
adapter. Unlike a random tiny DETR, its boxes and scores depend on the pixels:

- the image processor resizes each image as DETR's does (the shortest edge to `shortest_edge`, the longest at most
  `longest_edge`, nearest neighbour so that colours stay exact) and refuses a size that rounds to zero pixels, as
  transformers' processors do (with `do_resize=False` it keeps each image's size: boxes exact to the pixel); it
  pads a batch to its largest image and gives the `pixel_mask`;
- the model has one query per class: the box of query `k` is the bounding box of the pixels within `tolerance` of
  colour `k` inside the image's own region (`pixel_mask`), relative to that region as `(cx, cy, w, h)`, and its score
  `0.5 + 0.5 * (matching pixels / region pixels)` (bigger squares score higher), 0 when no pixel matches;
- `post_process_object_detection` keeps scores above `threshold` and scales boxes to `target_sizes`, rounded to
  whole pixels.
"""

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BaseImageProcessor, BatchFeature, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class SquareDetectorConfig(PretrainedConfig):
    model_type = "mmib-square-detector"

    def __init__(self, colours=((255, 0, 0), (0, 255, 0)), tolerance=40, **kwargs):
        self.colours = [list(colour) for colour in colours]
        self.tolerance = tolerance
        kwargs.setdefault("id2label", {index: f"colour{index}" for index in range(len(self.colours))})
        super().__init__(**kwargs)


@dataclass
class SquareDetectorOutput(ModelOutput):
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None


class SquareDetector(PreTrainedModel):
    config_class = SquareDetectorConfig
    main_input_name = "pixel_values"

    def __init__(self, config: SquareDetectorConfig):
        super().__init__(config)
        # One weight, so that the model has a device and a dtype; the scores are multiplied by it.
        self.gain = torch.nn.Parameter(torch.ones(()))
        self.post_init()

    def _init_weights(self, module):
        if module is self:
            with torch.no_grad():
                self.gain.fill_(1.0)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None, **kwargs):
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long)
        colours = torch.tensor(self.config.colours, dtype=torch.float32)
        scores = torch.zeros(batch, len(colours))
        boxes = torch.zeros(batch, len(colours), 4)
        for index in range(batch):
            rows = int(pixel_mask[index].any(dim=1).sum())
            columns = int(pixel_mask[index].any(dim=0).sum())
            pixels = pixel_values[index, :, :rows, :columns].float() * 255
            for label, colour in enumerate(colours):
                found = (pixels - colour[:, None, None]).abs().amax(dim=0) <= self.config.tolerance
                if not found.any():
                    continue
                ys, xs = torch.nonzero(found, as_tuple=True)
                x0, x1 = xs.min().item() / columns, (xs.max().item() + 1) / columns
                y0, y1 = ys.min().item() / rows, (ys.max().item() + 1) / rows
                boxes[index, label] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
                scores[index, label] = 0.5 + 0.5 * found.sum().item() / (rows * columns)
        scores = scores.to(self.gain.dtype) * self.gain
        return SquareDetectorOutput(logits=scores, pred_boxes=boxes.to(self.gain.dtype))


class SquareDetectorImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(self, shortest_edge: int = 48, longest_edge: int = 64, do_resize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.shortest_edge = shortest_edge
        self.longest_edge = longest_edge
        self.do_resize = do_resize

    def resized(self, image: Image.Image) -> Image.Image:
        if not self.do_resize:
            return image.convert("RGB")
        width, height = image.size
        scale = min(self.shortest_edge / min(width, height), self.longest_edge / max(width, height))
        size = (round(width * scale), round(height * scale))
        if min(size) == 0:
            raise ValueError(f"Size must contain 'height' and 'width' keys; got width={size[0]}, height={size[1]}")
        return image.convert("RGB").resize(size, Image.NEAREST)

    def preprocess(self, images, return_tensors=None, **kwargs) -> BatchFeature:
        images = [images] if isinstance(images, Image.Image) else list(images)
        resized = [self.resized(image) for image in images]
        height, width = max(image.height for image in resized), max(image.width for image in resized)
        pixel_values = torch.zeros(len(resized), 3, height, width)
        pixel_mask = torch.zeros(len(resized), height, width, dtype=torch.long)
        for index, image in enumerate(resized):
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            pixels = pixels.reshape(image.height, image.width, 3).permute(2, 0, 1).float() / 255
            pixel_values[index, :, : image.height, : image.width] = pixels
            pixel_mask[index, : image.height, : image.width] = 1
        return BatchFeature({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors)

    def post_process_object_detection(self, outputs, threshold: float = 0.5, target_sizes=None):
        results = []
        for index, (scores, boxes) in enumerate(zip(outputs.logits, outputs.pred_boxes)):
            height, width = target_sizes[index]
            cx, cy, w, h = boxes.float().unbind(-1)
            corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
            # Rounded to whole pixels: float32 noise (8 / 96 * 96 = 7.99999) must not move a box by a pixel.
            corners = (corners.double() * torch.tensor([width, height, width, height], dtype=torch.float64)).round()
            keep = scores > threshold
            labels = torch.arange(len(scores))
            results.append({"scores": scores[keep].float(), "labels": labels[keep], "boxes": corners[keep].float()})
        return results
