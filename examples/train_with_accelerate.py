"""Train MMIB with a plain Accelerate loop, without `Trainer`.

The model's `outputs.loss` is the whole training objective of the paper (eq. 29: task loss + beta_text * KL_text +
beta_vision * KL_vision + alignment_weight * alignment loss, see `mmib.mmib_total_loss`), so a hand-written loop
trains the information bottleneck by calling `outputs.loss.backward()`. The loop below makes the same choices as
`MMIBTrainer` with its defaults: fused AdamW, weight decay on every weight except biases and LayerNorm weights,
linear learning-rate decay to 0 over `max_steps` without warm-up, gradient clipping to norm 1, one seed set before
training. `tests/examples/test_train_with_accelerate.py` checks that it reaches the same per-step losses as
`MMIBTrainer`.

    # from a saved MMIB checkpoint (model + processor, e.g. a train_mmib.py output folder):
    python examples/train_with_accelerate.py --model_name_or_path runs/t17 \
        --train_file examples/twitter2017-sample/train.jsonl --max_steps 20 --output_dir runs/t17-accelerate
    # or a fresh NER model around two towers:
    python examples/train_with_accelerate.py --text_model_name_or_path bert-base-cased \
        --vision_model_name_or_path microsoft/resnet-50 --train_file my/train.jsonl --max_steps 1000
    accelerate launch examples/train_with_accelerate.py ...   # the same script on several devices
"""

import argparse
import logging

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoTokenizer, get_linear_schedule_with_warmup, set_seed

from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBProcessor
from mmib.data import load_jsonl
from mmib.modeling_mmib import MMIBPreTrainedModel
from mmib.training.collator import MMIBDataCollator

logger = logging.getLogger(__name__)

LOSS_PARTS = ("task_loss", "kl_text", "kl_vision", "alignment_loss")


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """Fused AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights (as `Trainer`)."""
    no_decay = {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
        if isinstance(module, torch.nn.LayerNorm) or "bias" in name
    }
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in trainable if name not in no_decay], "weight_decay": weight_decay},
        {"params": [p for name, p in trainable if name in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True)


def train(
    model: MMIBPreTrainedModel,
    dataset: Dataset,
    collator: MMIBDataCollator,
    max_steps: int,
    learning_rate: float = 3e-5,
    weight_decay: float = 0.01,
    batch_size: int = 8,
    max_grad_norm: float = 1.0,
    seed: int = 42,
    shuffle: bool = True,
    accelerator: Accelerator | None = None,
    logging_steps: int = 10,
) -> list[float]:
    """
    Trains `model` for `max_steps` optimizer steps on `dataset`, cycling through it as often as needed.

    Args:
        model ([`MMIBForTokenClassification`] or [`MMIBForRelationClassification`]): the model to train in place.
        dataset (`datasets.Dataset`): rows in the `mmib.data` layout.
        collator ([`MMIBDataCollator`]): rows -> model inputs (labels included).
        max_steps (`int`): optimizer steps.
        learning_rate, weight_decay, batch_size, max_grad_norm, seed: as the `TrainingArguments` of the same names.
        shuffle (`bool`, *optional*, defaults to `True`): shuffle the rows every epoch (`False`: file order).
        accelerator (`Accelerator`, *optional*): defaults to `Accelerator()`.
        logging_steps (`int`, *optional*, defaults to 10): log the loss and its parts every that many steps.

    Returns:
        `list[float]`: the loss of every step (mean over processes), the objective of paper eq. 29.
    """
    accelerator = accelerator or Accelerator()
    set_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collator)
    optimizer = build_optimizer(model, learning_rate, weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=max_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    losses: list[float] = []
    while len(losses) < max_steps:
        for batch in loader:
            outputs = model(**batch)
            accelerator.backward(outputs.loss)
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(accelerator.gather(outputs.loss.detach()[None]).mean().item())
            if len(losses) % logging_steps == 0:
                parts = {name: round(outputs[name].item(), 4) for name in LOSS_PARTS if outputs.get(name) is not None}
                logger.info("step %d: loss %.4f %s", len(losses), losses[-1], parts)
            if len(losses) == max_steps:
                break
    return losses


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", required=True, help="Training posts in the JSON-lines layout of mmib.data.")
    parser.add_argument("--model_name_or_path", help="An MMIB checkpoint folder with its processor.")
    parser.add_argument("--text_model_name_or_path", help="Text tower for a fresh NER model.")
    parser.add_argument("--vision_model_name_or_path", help="Vision tower and image processor, fresh NER model.")
    parser.add_argument("--num_crops", type=int, default=4, help="Crops per post of a fresh model.")
    parser.add_argument("--max_steps", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--output_dir", help="Save the trained model and processor here.")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.model_name_or_path:
        processor = MMIBProcessor.from_pretrained(args.model_name_or_path)
        model_class = MMIBForTokenClassification if processor.task == "ner" else MMIBForRelationClassification
        model = model_class.from_pretrained(args.model_name_or_path)
        # The checkpoint's label ids, not the ones the data file alone would give.
        label_names = [model.config.id2label[index] for index in range(model.config.num_labels)]
        data = load_jsonl({"train": args.train_file}, task=processor.task, label_names=label_names)
    elif args.text_model_name_or_path and args.vision_model_name_or_path:
        data = load_jsonl({"train": args.train_file}, task="ner")
        label_names = data["train"].features["ner_tags"].feature.names
        processor = MMIBProcessor(
            AutoImageProcessor.from_pretrained(args.vision_model_name_or_path),
            AutoTokenizer.from_pretrained(args.text_model_name_or_path),
            task="ner",
            num_crops=args.num_crops,
        )
        model = MMIBForTokenClassification.from_text_vision_pretrained(
            args.text_model_name_or_path,
            args.vision_model_name_or_path,
            num_crops=args.num_crops,
            id2label=dict(enumerate(label_names)),
        )
    else:
        raise SystemExit("Pass --model_name_or_path, or --text_model_name_or_path and --vision_model_name_or_path.")
    accelerator = Accelerator()
    losses = train(
        model,
        data["train"],
        MMIBDataCollator(processor),
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
        accelerator=accelerator,
        logging_steps=args.logging_steps,
    )
    logger.info("first loss %.4f, last loss %.4f", losses[0], losses[-1])
    if args.output_dir and accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
