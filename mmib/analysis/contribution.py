"""Contribution scores of the paper's §V-B: how much each input position (word, image, crop) contributes to its
modality's learned representation.

For one modality with projected features X (n × d) and latents Z (n × d), A = X Zᵀ (n × n) and the score of
position i is the row sum Â_i = Σ_j A_ij = X_i · Σ_j Z_j, over the post's valid positions j (real tokens; image
slots that hold an image). The text side uses X^T, Z^T over the tokens, the vision side X^V, Z^V over the whole
image and its crops. In eval mode Z is the latent mean.

A post with an image and no crops gets its crops from the checkpoint's recorded object extractor (or the detector
given as `object_detector`), as `mmib predict` does; its objects' scores are then also drawn as coloured boxes on
the image (`<id>_objects.png`, the paper's Fig. 3).
"""

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints_mmib import load_checkpoint
from ..post_files import read_posts
from .intermediates import encoder_intermediates
from .plotting import plot_contributions, plot_object_boxes


def contribution_scores(inputs: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Row sums of A = X Zᵀ over valid positions.

    Args:
        inputs (`torch.Tensor` of shape `(B, n, d)`): X.
        latents (`torch.Tensor` of shape `(B, n, d)`): Z.
        mask (`torch.Tensor` of shape `(B, n)`): True (1) at valid positions.

    Returns:
        `torch.Tensor` of shape `(B, n)`: Â, 0 at invalid positions.
    """
    valid = mask.to(inputs.dtype)
    products = torch.einsum("bid,bjd->bij", inputs, latents)
    return (products * valid[:, None, :]).sum(dim=-1) * valid


def explain_posts(
    model_name_or_path: str,
    input_file: str,
    output_dir: str | Path,
    batch_size: int = 8,
    object_detector: str | bool | None = None,
    detector_trust_remote_code: bool = False,
) -> list[dict]:
    """
    Contribution scores of every post in `input_file` under an NER checkpoint; writes `contributions.json` (all
    posts), `<id>.png` per post and, for a post whose crops were extracted, `<id>_objects.png` (its objects' scores
    as coloured boxes on the image, the paper's Fig. 3) to `output_dir`.

    The posts are those of `mmib predict` (raw `text` or `words`, `image`, `crops`; see
    [`~post_files.read_posts`]) and are encoded as the predictor encodes them, so one file serves
    both commands. Any post that cannot be used (e.g. an unreadable image) stops the command with its file and line.

    Args:
        object_detector, detector_trust_remote_code: as in `MMIBPredictor.from_pretrained`, for posts with an
            image and no crops.

    Returns:
        One dict per post: `id`, `text`, `words`, `word_scores` (at each word's first sub-word, the position the
        tagger reads; `null` for words cut by `max_length`), `tokens`, `token_scores`, `image_slots` (name and file
        of each image slot that holds an image; `box` instead of `file` for an extracted object) and `image_scores`.
    """
    # Imported here: the analyses load checkpoints without the prediction stack; only explain applies one.
    from ..predictor_mmib import MMIBPredictor

    model, processor = load_checkpoint(model_name_or_path, task="ner")
    model.eval()
    predictor = MMIBPredictor(
        model, processor, object_detector=object_detector, detector_trust_remote_code=detector_trust_remote_code
    )
    posts = read_posts(input_file, max_crops=processor.num_crops, spans="ignored")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records = []
    progress = tqdm(total=len(posts), desc="contribution scores", unit="post")
    for start in range(0, len(posts), batch_size):
        chunk = posts[start : start + batch_size]
        batch = predictor.encode(chunk)
        tensors = encoder_intermediates(model, batch)
        text_scores = contribution_scores(tensors.text_inputs, tensors.text_latents, batch["attention_mask"])
        image_scores = None
        if tensors.vision_inputs is not None and "image_mask" in batch:
            image_scores = contribution_scores(tensors.vision_inputs, tensors.vision_latents, batch["image_mask"])
        for row, post in enumerate(chunk):
            length = int(batch["attention_mask"][row].sum())
            # word_index is padded to the longest post of the batch with -1, and misses words cut by max_length.
            word_index = batch["word_index"][row, : len(post.words)].tolist()
            token_scores = text_scores[row, :length].tolist()
            word_scores = [token_scores[position] if position >= 0 else None for position in word_index]
            word_scores += [None] * (len(post.words) - len(word_scores))
            objects = post.objects or []
            panels = [("image", post.image)] + [
                (f"crop {index}" if index >= len(objects) else f"object {index}: {objects[index]['query']}", crop)
                for index, crop in enumerate(post.crops)
            ]
            slots = []
            if image_scores is not None:
                for slot, (name, image) in enumerate(panels):
                    if bool(batch["image_mask"][row, slot]):
                        file = post.image_files[slot] if slot < len(post.image_files) else None
                        where = {"box": objects[slot - 1]["box"]} if 0 < slot <= len(objects) else {"file": file}
                        slots.append((name, where, image, image_scores[row, slot].item()))
            record = {
                "id": post.id,
                "text": post.text,
                "words": post.words,
                "word_scores": word_scores,
                "tokens": processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][row, :length].tolist()),
                "token_scores": token_scores,
                "image_slots": [{"slot": name, **where} for name, where, _, _ in slots],
                "image_scores": [score for _, _, _, score in slots],
            }
            records.append(record)
            plot_contributions(
                post.words,
                [score if score is not None else 0.0 for score in word_scores],
                [(name, image.convert("RGB")) for name, _, image, _ in slots],
                record["image_scores"],
                output_dir / _file_stem(str(post.id)),
                title=f"post {post.id}: contribution scores (row sums of X·Zᵀ)",
            )
            object_slots = [slot for slot in slots if "box" in slot[1]]
            if object_slots and slots[0][0] == "image":
                plot_object_boxes(
                    slots[0][2].convert("RGB"),
                    [where["box"] for _, where, _, _ in object_slots],
                    [score for _, _, _, score in object_slots],
                    [objects[index]["query"] for index in range(len(object_slots))],
                    output_dir / f"{_file_stem(str(post.id))}_objects",
                    title=f"post {post.id}: object contribution scores",
                    image_score=slots[0][3],
                )
            progress.update()
    progress.close()
    (output_dir / "contributions.json").write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return records


def _file_stem(post_id: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in post_id)
