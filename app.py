"""
MMIB demo: type or paste a post, drop an image (optional), see its entities highlighted with type and score and,
with a relation checkpoint, the relations between them.

Local: `pip install ".[app]"` then `python app.py --model runs/demo-twitter2017 [--relation_model RE_CHECKPOINT]`.
Hugging Face Space (Gradio SDK, this file as `app_file`): set the variables `MMIB_MODEL` (checkpoint id or folder)
and optionally `MMIB_RELATION_MODEL`; the Space's `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` are honoured.

An image without crops gets the crops of the checkpoint's recorded object extractor (or of `--object_detector`,
env `MMIB_OBJECT_DETECTOR`; `--no_object_detector` turns it off); the objects' boxes are drawn on the image.
"""

import argparse
import os
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from mmib import MMIBPredictor
from mmib.image_loading_mmib import load_image
from mmib.post_files import read_posts

SAMPLE = Path(__file__).resolve().parent / "examples" / "twitter2017-sample"
RELATION_HEADERS = ["head", "relation", "tail", "score"]
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def sample_examples(limit: int = 6) -> list[list[str | None]]:
    """`[text, image path]` of the shipped sample's posts that have an image, test split first."""
    examples = []
    for split in ("test", "validation", "train"):
        path = SAMPLE / f"{split}.jsonl"
        if not path.is_file():
            continue
        for post in read_posts(path, decode_images=False):
            if post.image is not None and Path(post.image).is_file():
                examples.append([post.text, post.image])
            if len(examples) == limit:
                return examples
    return examples


def entity_label(entity: dict) -> str:
    """The label shown on a highlighted entity: its type and score."""
    return f"{entity['type']} {entity['score']:.2f}"


def highlight(text: str, entities: list[dict]) -> list[tuple[str, str | None]]:
    """The text cut into `(segment, label or None)` pieces for `gr.HighlightedText`."""
    pieces, position = [], 0
    for entity in entities:
        if entity["start"] > position:
            pieces.append((text[position : entity["start"]], None))
        pieces.append((text[entity["start"] : entity["end"]], entity_label(entity)))
        position = entity["end"]
    if position < len(text):
        pieces.append((text[position:], None))
    return pieces


def draw_objects(image: str | Image.Image, objects: list[dict]) -> Image.Image:
    """
    The post's image, upright as the model saw it, with each object's box (`[x0, y0, x1, y1]` in its pixels, x1/y1
    exclusive) outlined in its own colour and labelled `"rank query score"`.
    """
    picture = load_image(image).copy()
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 150))
    for rank, item in enumerate(objects):
        x0, y0, x1, y1 = item["box"]
        colour = BOX_COLOURS[rank % len(BOX_COLOURS)]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
        label = f"{rank + 1} {item['query']} {item['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), label)
        draw.rectangle((left, top, right + 2, bottom + 2), fill=colour)
        draw.text((x0 + 1, y0 + 1), label, fill="white")
    return picture


def build_demo(predictor: MMIBPredictor) -> gr.Blocks:
    """The Gradio app around one predictor."""

    def tag(text: str, image: str | None):
        if not text or not text.strip():
            raise gr.Error("Type or paste a post first.")
        result = predictor({"text": text, "image": image})
        if "error" in result:
            raise gr.Error(result["error"])
        entities = result["entities"]
        relations = [
            [entities[r["head"]]["text"], r["label"], entities[r["tail"]]["text"], round(r["score"], 4)]
            for r in result.get("relations", [])
        ]
        boxes = draw_objects(image, result["objects"]) if image and result.get("objects") is not None else None
        return highlight(text, entities), relations, boxes, result

    with gr.Blocks(title="MMIB: multimodal NER and relations in tweets") as demo:
        gr.Markdown(
            "# MMIB: multimodal named entities and relations in tweets\n"
            "Entities are highlighted with their type and score (the CRF probability of their tags)."
        )
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Post", lines=3, elem_id="post-text")
                # PNG keeps the uploaded pixels exactly (the default WebP is lossy), so the app sees what the API sees.
                image = gr.Image(label="Image (optional)", type="filepath", format="png", elem_id="post-image")
                submit = gr.Button("Tag the post", variant="primary", elem_id="submit")
            with gr.Column():
                highlighted = gr.HighlightedText(
                    label="Entities", combine_adjacent=False, show_legend=False, elem_id="entities"
                )
                relations = gr.Dataframe(
                    headers=RELATION_HEADERS,
                    label="Relations" if predictor.relation_model is not None else "Relations (no relation model)",
                    elem_id="relations",
                )
                objects = gr.Image(label="Objects (the crops the model read)", type="pil", elem_id="objects")
                raw = gr.JSON(label="Result", elem_id="result")
        examples = sample_examples()
        if examples:
            gr.Examples(examples, inputs=[text, image])
        submit.click(tag, inputs=[text, image], outputs=[highlighted, relations, objects, raw])
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="MMIB Gradio demo.")
    parser.add_argument("--model", default=os.environ.get("MMIB_MODEL"), help="NER checkpoint (env MMIB_MODEL).")
    parser.add_argument(
        "--relation_model",
        default=os.environ.get("MMIB_RELATION_MODEL"),
        help="RE checkpoint (env MMIB_RELATION_MODEL).",
    )
    detector = parser.add_mutually_exclusive_group()
    detector.add_argument(
        "--object_detector",
        default=os.environ.get("MMIB_OBJECT_DETECTOR"),
        help="Detector for the crops of an image (default: the checkpoint's recorded one; env MMIB_OBJECT_DETECTOR).",
    )
    detector.add_argument("--no_object_detector", action="store_true", help="No object extraction.")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--device")
    parser.add_argument("--port", type=int, help="Port (default: GRADIO_SERVER_PORT or 7860).")
    parser.add_argument("--host", help="Address (default: GRADIO_SERVER_NAME or 127.0.0.1).")
    args = parser.parse_args()
    if not args.model:
        parser.error("give --model or set MMIB_MODEL")
    predictor = MMIBPredictor.from_pretrained(
        args.model,
        relation_model=args.relation_model,
        dtype=args.dtype,
        device=args.device,
        object_detector=False if args.no_object_detector else args.object_detector,
    )
    if predictor.task != "ner":
        parser.error(f"{args.model} is a relation checkpoint; the demo needs an NER checkpoint (--relation_model RE)")
    print(f"mmib app: device {predictor.device}, dtype {predictor.dtype} ({predictor.dtype_reason})", flush=True)
    build_demo(predictor).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
