"""examples/train_with_accelerate.py: a plain Accelerate loop on `outputs.loss` reaches MMIBTrainer's losses."""

from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from transformers import TrainingArguments

from conftest import NER_LABELS, REPO, load_script, make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.training.collator import MMIBDataCollator
from mmib.training.trainer import MMIBTrainer

EXAMPLE = REPO / "examples" / "train_with_accelerate.py"
SEED, STEPS, BATCH, LEARNING_RATE, WEIGHT_DECAY = 7, 4, 2, 1e-3, 0.01


def load_example():
    return load_script(EXAMPLE, "train_with_accelerate")


def dataset_with_images(folder: Path) -> Dataset:
    """Four posts: images and crops on disk (one post without any), so that every term of eq. 29 is non-zero."""
    paths = []
    for index in range(6):
        path = folder / f"image{index}.png"
        make_image(index).save(path)
        paths.append(str(path))
    rows = [
        (["john", "smith", "visits", "london"], [1, 2, 0, 3], paths[0], [paths[1]]),
        (["i", "love", "paris", "!"], [0, 0, 3, 0], paths[2], []),
        (["rt", "john", "meets", "smith"], [0, 1, 0, 1], None, []),
        (["the", "city", "of", "london"], [0, 0, 0, 3], paths[3], [paths[4], paths[5]]),
    ]
    features = Features(
        {
            "words": List(Value("string")),
            "ner_tags": List(ClassLabel(names=NER_LABELS)),
            "image": Value("string"),
            "crops": List(Value("string")),
        }
    )
    return Dataset.from_list(
        [{"words": w, "ner_tags": t, "image": i, "crops": c} for w, t, i, c in rows], features=features
    )


def fresh_model() -> MMIBForTokenClassification:
    torch.manual_seed(0)
    return MMIBForTokenClassification(tiny_config(beta_text=0.5, beta_vision=0.25, alignment_weight=2.0))


class RecordingTrainer(MMIBTrainer):
    """Records the loss of every training step as the model returned it (the logs are rounded averages)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_losses, self.step_parts = [], []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        if model.training:
            self.step_losses.append(loss.item())
            self.step_parts.append({name: outputs[name].item() for name in ("kl_vision", "alignment_loss")})
        return (loss, outputs) if return_outputs else loss


def test_accelerate_loop_reaches_the_trainer_losses(tmp_path):
    example = load_example()
    dataset = dataset_with_images(tmp_path)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    collator = MMIBDataCollator(processor)

    trainer = RecordingTrainer(
        model=fresh_model(),
        args=TrainingArguments(
            output_dir=str(tmp_path / "trainer"),
            use_cpu=True,
            report_to="none",
            remove_unused_columns=False,
            label_names=["labels"],
            per_device_train_batch_size=BATCH,
            max_steps=STEPS,
            learning_rate=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
            seed=SEED,
            train_sampling_strategy="sequential",
            save_strategy="no",
            logging_steps=1,
        ),
        train_dataset=dataset,
        data_collator=collator,
    )
    trainer.train()

    model = fresh_model()
    losses = example.train(
        model,
        dataset,
        collator,
        max_steps=STEPS,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        batch_size=BATCH,
        seed=SEED,
        shuffle=False,
    )
    print("trainer:", trainer.step_losses, "\naccelerate loop:", losses)
    assert len(losses) == len(trainer.step_losses) == STEPS
    # Every term of eq. 29 took part (posts with images and crops in both batches).
    assert all(parts["kl_vision"] > 0 and parts["alignment_loss"] > 0 for parts in trainer.step_parts)
    assert losses == pytest.approx(trainer.step_losses, rel=1e-5)
    # Training moved the weights the same way.
    trained = dict(trainer.model.named_parameters())
    difference = max((p - trained[name]).abs().max().item() for name, p in model.named_parameters())
    assert difference < 1e-5, difference
