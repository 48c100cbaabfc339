"""
Cost of the forward input checks (`mmib.modeling_mmib.check_inputs` and `check_task_inputs`) relative to a forward
pass.

The cheapest realistic forward is measured, so that the ratio is an upper bound: the MiniLM-L6 text tower (the
offline one), cached `image_features` of ResNet-50 width (no vision tower run), a batch of 16 posts of 64 tokens with
4 crops, labels given (NER, CRF loss), eval mode, no gradients. Runs with and without the checks alternate, and the
medians are compared.

    python benchmarks/bench_input_checks.py [--repeats 40] [--threads 2]
"""

import argparse
import statistics
import time

import torch
from transformers import AutoConfig, ResNetConfig

from bench_common import minilm_path, quiet_logging
from mmib import MMIBConfig, MMIBForTokenClassification, modeling_mmib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_logging()
    torch.manual_seed(0)
    config = MMIBConfig(
        text_config=AutoConfig.from_pretrained(minilm_path()),
        vision_config=ResNetConfig(),
        num_crops=4,
        id2label=dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"])),
    )
    model = MMIBForTokenClassification(config).eval()
    batch, length, words = args.batch_size, args.length, args.length // 2
    inputs = {
        "input_ids": torch.randint(0, config.text_config.vocab_size, (batch, length)),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "word_index": torch.arange(1, words + 1).repeat(batch, 1),
        "image_features": torch.randn(batch, 5, config.vision_feature_size),
        "image_mask": torch.ones(batch, 5, dtype=torch.bool),
        "labels": torch.randint(0, config.num_labels, (batch, words)),
    }
    real_checks = (modeling_mmib.check_inputs, modeling_mmib.check_task_inputs)

    def forward_seconds(checks) -> float:
        modeling_mmib.check_inputs, modeling_mmib.check_task_inputs = checks
        start = time.perf_counter()
        with torch.no_grad():
            model(**inputs)
        return time.perf_counter() - start

    def checks_seconds() -> float:
        start = time.perf_counter()
        real_checks[0](
            config,
            **{k: v for k, v in inputs.items() if k not in ("word_index", "labels")},
            vocab_size=config.text_config.vocab_size,
        )
        real_checks[1](config, "ner", inputs["input_ids"], word_index=inputs["word_index"], labels=inputs["labels"])
        return time.perf_counter() - start

    def skipped(*_args, **_kwargs) -> None:
        return None

    for _ in range(3):
        forward_seconds(real_checks)
    with_checks, without_checks, alone = [], [], []
    for _ in range(args.repeats):
        with_checks.append(forward_seconds(real_checks))
        without_checks.append(forward_seconds((skipped, skipped)))
        alone.append(checks_seconds())
    modeling_mmib.check_inputs, modeling_mmib.check_task_inputs = real_checks
    on, off, cost = (statistics.median(x) for x in (with_checks, without_checks, alone))
    print(f"machine: {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, torch {torch.__version__}")
    print(f"forward with checks    {on * 1e3:8.2f} ms (median of {args.repeats})")
    print(f"forward without checks {off * 1e3:8.2f} ms")
    print(f"the two checks alone   {cost * 1e3:8.3f} ms = {100 * cost / off:.2f}% of a forward pass")
    print(f"forward ratio with / without: {on / off:.4f}")


if __name__ == "__main__":
    main()
