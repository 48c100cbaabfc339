"""MMIBTrainer: its loss and logs, DataParallel averaging, Viterbi prediction, and the stop on a non-finite loss or
gradient before it reaches the weights or a checkpoint."""

import pytest
import torch
from torch import nn

from conftest import NER_LABELS, all_path_scores, ner_dataset, tiny_config
from mmib import MMIBForTokenClassification
from mmib.training.trainer import LOSS_PARTS, MMIBTrainer, NonFiniteTrainingError


@pytest.fixture
def trainer(make_trainer) -> MMIBTrainer:
    torch.manual_seed(0)
    # The default near-deterministic start makes both KLs equal (the means are LayerNorm outputs of unit variance and
    # the log-variances one constant); the LayerNorm start gives two different KLs, so swapped weights show.
    config = tiny_config(beta_text=0.5, beta_vision=0.25, alignment_weight=2.0, latent_logvar_init=None)
    model = MMIBForTokenClassification(config)
    return make_trainer(model, evaluate=True, label_names=["labels"], per_device_eval_batch_size=2)


def test_compute_loss_adds_the_weighted_regularizers_and_logs_their_means(trainer, tmp_path):
    batch = trainer.data_collator(list(ner_dataset(tmp_path)))
    trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    part = {name: outputs[name].item() for name in LOSS_PARTS}
    # The task loss by brute force: the mean CRF negative log-likelihood of the two posts' gold tags.
    nlls = []
    for post, gold in enumerate(batch["labels"].tolist()):
        paths, scores = all_path_scores(trainer.model.crf, outputs.logits[post])
        nlls.append((scores.logsumexp(0) - scores[paths.tolist().index(gold)]).item())
    assert part["task_loss"] == pytest.approx(sum(nlls) / 2, rel=1e-5)
    # The fixture's weights: beta_text 0.5, beta_vision 0.25, alignment_weight 2.0. Each term moves the loss far
    # beyond the tolerance, and the two KLs differ, so that a term left out or two weights swapped shows.
    terms = [0.5 * part["kl_text"], 0.25 * part["kl_vision"], 2.0 * part["alignment_loss"]]
    assert min(abs(term) for term in terms) > 1e-3 * abs(part["task_loss"])
    assert abs(part["kl_text"] - part["kl_vision"]) * 0.25 > 1e-3 * abs(part["task_loss"])
    expected = part["task_loss"] + 0.5 * part["kl_text"] + 0.25 * part["kl_vision"] + 2.0 * part["alignment_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    trainer.model.train()
    parts = []
    for _ in range(2):
        with torch.no_grad():
            outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]
        parts.append({name: outputs[name].item() for name in LOSS_PARTS})
    assert parts[0]["kl_text"] != parts[1]["kl_text"]  # sampled latents: the two passes differ
    logs = {"loss": 1.0}
    trainer.log(logs)
    for name in LOSS_PARTS:
        assert logs[name] == pytest.approx(round((parts[0][name] + parts[1][name]) / 2, 4), abs=1e-4), name
    assert trainer._loss_part_count == 0
    eval_logs = {"eval_loss": 1.0}
    trainer.log(eval_logs)
    assert "task_loss" not in eval_logs


class TwoReplicas(nn.Module):
    """What `nn.DataParallel` does with two GPUs, on the CPU: each half of the batch goes through the module, and the
    outputs are gathered as its `gather` does (0-dim tensors become one value per replica, the others are
    concatenated along the batch)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, **inputs):
        halves = [{name: value[index::2] for name, value in inputs.items()} for index in range(2)]
        outputs = [self.module(**half) for half in halves]
        return type(outputs[0])(
            **{
                name: torch.stack([out[name] for out in outputs])
                if outputs[0][name].dim() == 0
                else torch.cat([out[name] for out in outputs])
                for name in outputs[0].keys()
            }
        )


def test_a_data_parallel_training_step_averages_loss_and_parts_over_the_replicas(trainer, monkeypatch, tmp_path):
    """`python train_mmib.py` on two GPUs without a launcher: the Trainer wraps the model in `nn.DataParallel`."""
    monkeypatch.setattr(trainer.args, "_n_gpu", 2)  # what TrainingArguments finds on such a machine
    batch = trainer.data_collator(list(ner_dataset(tmp_path)))
    replicas = TwoReplicas(trainer.model).train()
    # By hand: each replica's half of the batch alone, with the same sampled latents (same seed, same order).
    torch.manual_seed(7)
    with torch.no_grad():
        halves = [trainer.model(**{name: value[index::2] for name, value in batch.items()}) for index in range(2)]
    by_replica = [{name: half[name].item() for name in ("loss", *LOSS_PARTS)} for half in halves]
    for part in by_replica:
        weighted = 0.5 * part["kl_text"] + 0.25 * part["kl_vision"] + 2.0 * part["alignment_loss"]
        assert part["loss"] == pytest.approx(part["task_loss"] + weighted, rel=1e-6)
    assert by_replica[0]["task_loss"] != pytest.approx(by_replica[1]["task_loss"], rel=1e-3)

    torch.manual_seed(7)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this step is taken out of
    loss = trainer.training_step(replicas, batch)
    assert loss.item() == pytest.approx((by_replica[0]["loss"] + by_replica[1]["loss"]) / 2, rel=1e-5)
    assert all(p.grad is not None for p in trainer.model.classifier.parameters())
    logs = {"loss": loss.item()}
    trainer.log(logs)
    for name in LOSS_PARTS:
        mean = (by_replica[0][name] + by_replica[1][name]) / 2
        assert logs[name] == pytest.approx(round(mean, 4), abs=1e-4), name


def bio_entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans of a BIO sequence, written out for the test (an I- without its B- starts nothing)."""
    spans, start, kind = set(), None, None
    for position, tag in enumerate([*tags, "O"]):
        if start is not None and tag != f"I-{kind}":
            spans.add((start, position, kind))
            start = None
        if tag.startswith("B-"):
            start, kind = position, tag[2:]
    return spans


def test_predict_returns_viterbi_paths_and_word_level_metrics(trainer):
    model = trainer.model
    label_id = {name: index for index, name in enumerate(NER_LABELS)}
    with torch.no_grad():
        # Transitions that spell B-PER I-PER O B-LOC over four words, far above the tiny random emissions.
        model.crf.start_transitions.fill_(-5.0)
        model.crf.start_transitions[label_id["B-PER"]] = 5.0
        model.crf.end_transitions.fill_(-5.0)
        model.crf.end_transitions[label_id["B-LOC"]] = 5.0
        model.crf.transitions.fill_(-5.0)
        for previous, current in [("B-PER", "I-PER"), ("I-PER", "O"), ("O", "B-LOC")]:
            model.crf.transitions[label_id[previous], label_id[current]] = 5.0
    output = trainer.predict(ner_dataset())

    model.eval()
    batch = trainer.data_collator(list(ner_dataset()))
    with torch.no_grad():
        logits = model(**batch).logits
    for post in range(2):
        paths, scores = all_path_scores(model.crf, logits[post])
        assert output.predictions[post].tolist() == paths[scores.argmax()].tolist()
    designed = [label_id[tag] for tag in ("B-PER", "I-PER", "O", "B-LOC")]
    assert output.predictions.tolist() == [designed, designed]
    assert output.label_ids.tolist() == [[1, 2, 0, 3], [0, 0, 3, 0]]

    gold = [bio_entities([NER_LABELS[i] for i in row]) for row in output.label_ids.tolist()]
    predicted = [bio_entities([NER_LABELS[i] for i in row]) for row in output.predictions.tolist()]
    correct = sum(len(g & p) for g, p in zip(gold, predicted))
    precision = correct / sum(map(len, predicted))
    recall = correct / sum(map(len, gold))
    assert (correct, precision, recall) == (2, 0.5, pytest.approx(2 / 3))
    assert output.metrics["test_precision"] == pytest.approx(precision)
    assert output.metrics["test_recall"] == pytest.approx(recall)
    assert output.metrics["test_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert output.metrics["test_truncated_words"] == 0


def nan_trainer(make_trainer, nan_at_step: int) -> MMIBTrainer:
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config())
    calls = {"backward": 0}

    def poison(grad):
        # One backward per step (no accumulation): from step `nan_at_step` on, the gradient turns NaN.
        calls["backward"] += 1
        return grad * float("nan") if calls["backward"] >= nan_at_step else grad

    model.classifier.weight.register_hook(poison)
    return make_trainer(
        model,
        per_device_train_batch_size=1,
        max_steps=5,
        save_strategy="steps",
        save_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0.0,  # no clipping: clipping would not save the weights from a NaN anyway
    )


def test_nan_gradient_stops_training_at_its_step_before_the_weights_or_a_checkpoint(make_trainer, tmp_path):
    trainer = nan_trainer(make_trainer, nan_at_step=3)
    with pytest.raises(
        NonFiniteTrainingError, match=r"stopped at step 3 .*mmib|stopped at step 3 .*classifier.weight"
    ):
        trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = sorted(path.name for path in tmp_path.glob("checkpoint-*"))
    assert saved == ["checkpoint-1", "checkpoint-2"]


def test_finite_training_is_not_stopped(make_trainer):
    trainer = nan_trainer(make_trainer, nan_at_step=10**6)
    trainer.train()
    assert trainer.state.global_step == 5


def test_nan_loss_stops_training_at_the_first_step(make_trainer, tmp_path):
    trainer = nan_trainer(make_trainer, nan_at_step=10**6)
    with torch.no_grad():
        trainer.model.classifier.bias[0] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at step 1 .*the loss is nan"):
        trainer.train()
    assert list(tmp_path.glob("checkpoint-*")) == []
