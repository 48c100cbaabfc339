"""`MMIBTrainer`: the Hugging Face `Trainer` with MMIB's total loss (paper eq. 29) and its parts in the logs."""

import os
from collections import defaultdict

import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

LOSS_PARTS = ("task_loss", "kl_text", "kl_vision", "alignment_loss")


class NonFiniteTrainingError(FloatingPointError):
    """The loss or a gradient became NaN or infinite during training; raised before the weights are updated."""


class MMIBTrainer(Trainer):
    """
    `Trainer` for [`MMIBForTokenClassification`] and [`MMIBForRelationClassification`].

    - `compute_loss` returns the model's `loss`, the objective of paper eq. 29 as [`mmib_total_loss`] defines it
      (task loss + beta_text * kl_text + beta_vision * kl_vision + alignment_weight * alignment_loss, with the
      weights from the model config; set them there, or with the `mmib train` flags of the same names).
    - Each part is logged next to `loss` under its own name, averaged over the logging interval and over processes
      (or `nn.DataParallel` replicas); a part that the model does not compute (ablation switches) is not logged.
    - `prediction_step` returns the CRF's Viterbi paths for NER (padded with -100) and the relation logits for RE.
    - `create_model_card` (called by `push_to_hub`) writes `model_card`, the MMIB card set by `mmib train`,
      instead of the generic Trainer card.
    - Saved folders hold `training_args.json` instead of the pickled `training_args.bin`, so a checkpoint shared
      on the Hub contains no pickle.
    - A loss or gradient that turns NaN or infinite stops training with [`NonFiniteTrainingError`] naming the step
      and the first affected parameters, before the optimizer step could write NaN into the weights and a
      checkpoint (not with fp16, where the grad scaler skips inf/NaN steps by design).
    """

    def __init__(self, *args, model_card: ModelCard | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card = model_card
        self._loss_part_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._loss_part_count = 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        outputs = model(**inputs)
        if model.training:
            for name in LOSS_PARTS:
                value = outputs.get(name)
                if value is not None:
                    # Under nn.DataParallel (several GPUs, no launcher) each part comes back once per replica: their
                    # mean, as the Trainer takes the mean of the loss (a part of one replica is its own mean).
                    self._loss_part_sums[name] += value.detach().float().mean()
            self._loss_part_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self.args.fp16:
            self._check_finite(model, loss)
        return loss

    def _check_finite(self, model: nn.Module, loss: torch.Tensor) -> None:
        """One fused norm over all gradients: finite norms mean finite gradients (a NaN or inf propagates)."""
        with_grad = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        norms = torch._foreach_norm([grad for _, grad in with_grad]) if with_grad else []
        finite = torch.isfinite(loss.detach()).all()
        if norms:
            finite = finite & torch.isfinite(torch.stack(norms)).all()
        if finite:
            return
        step = self.state.global_step + 1
        bad = [name for (name, _), norm in zip(with_grad, norms) if not torch.isfinite(norm)]
        what = f"the loss is {loss.item()}" if not torch.isfinite(loss).all() else "the loss is finite"
        raise NonFiniteTrainingError(
            f"Training stopped at step {step} (epoch {self.state.epoch:.2f}): {what}, and {len(bad)} parameters "
            f"have NaN/inf gradients{' (first: ' + ', '.join(bad[:5]) + ')' if bad else ''}. The weights were not "
            "updated and no checkpoint of this step was written. Lower the learning rate, set --max_grad_norm, "
            "check the inputs of this step, or resume from the last checkpoint."
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.remove(os.path.join(output_dir, TRAINING_ARGS_NAME))
            with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as handle:
                handle.write(self.args.to_json_string())

    def create_model_card(self, *args, **kwargs) -> None:
        if self.model_card is None:
            super().create_model_card(*args, **kwargs)
        elif self.is_world_process_zero():
            self.model_card.save(os.path.join(self.args.output_dir, "README.md"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_part_count:
            # Every process runs the same config, so every process holds the same parts.
            names = [name for name in LOSS_PARTS if name in self._loss_part_sums]
            sums = torch.stack([self._loss_part_sums[name] for name in names]) / self._loss_part_count
            means = self.accelerator.reduce(sums, reduction="mean")
            logs.update({name: round(value, 4) for name, value in zip(names, means.tolist())})
            self._loss_part_sums.clear()
            self._loss_part_count = 0
        super().log(logs, start_time)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ):
        """As `Trainer.prediction_step`, keeping one output: `predictions` (NER paths) or `logits` (RE)."""
        kept = "predictions" if "word_index" in inputs else "logits"
        dropped = [key for key in ("logits", "predictions", *LOSS_PARTS) if key != kept]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=dropped)
