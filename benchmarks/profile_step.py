"""Where the time of a cached MMIB training step and of eval inference goes, next to a plain BERT tagger.

Runs `torch.profiler` over a few cached training steps (batch 8) and eval passes (batch 32, Viterbi decoding
included) of `MMIBForTokenClassification` (MiniLM text tower, cached image features for the image and 4 crops) and
of a plain `BertForTokenClassification` on the same MiniLM tower and the same Twitter-2017 posts. Every MMIB module
is wrapped in a `record_function` range named after it, so the tables show the time per module (forward, with the
ops it launched) as well as per op.

    python benchmarks/profile_step.py --steps 4
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import BertForTokenClassification

from bench_common import build_model, minilm_path, quiet_logging  # isort: skip
from bench_vs_plain import make_batches  # isort: skip

MMIB_MODULES = (
    "mmib.text_model",
    "mmib.text_variational_encoder.mean_encoder",
    "mmib.text_variational_encoder.logvar_encoder",
    "mmib.vision_variational_encoder",
    "mmib.vision_to_text_encoder",
    "mmib.text_to_vision_encoder",
    "mmib.discriminator",
    "classifier",
    "crf",
)


def tag_modules(model: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Open a `record_function` range named after each module around its forward."""
    for name in names:
        module = model.get_submodule(name)
        ranges = []

        def enter(_module, _inputs, name=name, ranges=ranges):
            ranges.append(record_function(f"## {name}"))
            ranges[-1].__enter__()

        def leave(_module, _inputs, _outputs, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def tag_crf(model: torch.nn.Module) -> None:
    """The head calls the CRF's methods directly (not its forward): wrap them in ranges too."""
    for method in ("negative_log_likelihood", "decode"):
        original = getattr(model.crf, method)

        def wrapped(*args, original=original, method=method, **kwargs):
            with record_function(f"## crf.{method}"):
                return original(*args, **kwargs)

        setattr(model.crf, method, wrapped)


def ranges_table(prof, steps: int) -> str:
    """Milliseconds per step of every `## ` range (a module's forward with everything it launched)."""
    lines = ["| range | ms per step |", "|---|---|"]
    events = sorted(
        (event for event in prof.key_averages() if event.key.startswith("## ")),
        key=lambda event: -event.cpu_time_total,
    )
    for event in events:
        lines.append(f"| {event.key[3:]} | {event.cpu_time_total / 1000 / steps:.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Profiles the four workloads and prints one table each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="Profiled steps / passes per workload.")
    parser.add_argument("--rows", type=int, default=25, help="Rows per table.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--data_dir", help="Twitter-2017 folder (default: the shared data folder).")
    parser.add_argument("--train_batch_size", type=int, default=8, help="Posts per training step.")
    parser.add_argument("--eval_batch_size", type=int, default=32, help="Posts per eval pass.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_logging()
    train_batches, eval_batches, label_names = make_batches(
        args.train_batch_size, args.eval_batch_size, 2, args.data_dir
    )
    mmib = build_model(label_names, seed=0)
    plain = BertForTokenClassification.from_pretrained(minilm_path(), num_labels=len(label_names))
    tag_modules(mmib, MMIB_MODULES)
    tag_crf(mmib)
    for name, model in (("mmib", mmib), ("plain", plain)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, fused=True)
        model.train()
        for _ in range(2):  # warm-up
            _train_step(name, model, optimizer, train_batches[0])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(args.steps):
                _train_step(name, model, optimizer, train_batches[step % len(train_batches)])
        print(f"\n### {name}: training step, batch {args.train_batch_size} (cached features), {args.steps} steps\n")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows))
        print(ranges_table(prof, args.steps))
        model.eval()
        with torch.inference_mode():
            _eval_pass(name, model, eval_batches[0])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for step in range(args.steps):
                    _eval_pass(name, model, eval_batches[step % len(eval_batches)])
        print(f"\n### {name}: eval inference, batch {args.eval_batch_size} with decoding, {args.steps} passes\n")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows))
        print(ranges_table(prof, args.steps))


def _train_step(name, model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    with record_function("## forward"):
        outputs = model(**_inputs(name, batch, with_labels=True))
    with record_function("## backward"):
        outputs.loss.backward()
    with record_function("## optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def _eval_pass(name, model, batch) -> None:
    with record_function("## forward"):
        outputs = model(**_inputs(name, batch, with_labels=False))
    if name == "plain":
        outputs.logits.argmax(-1)


def _inputs(name: str, batch: dict, with_labels: bool) -> dict:
    if name == "mmib":
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "word_index", "image_features")}
        if with_labels:
            inputs["labels"] = batch["labels"]
        return inputs
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    if with_labels:
        inputs["labels"] = batch["token_labels"]
    return inputs


if __name__ == "__main__":
    main()
