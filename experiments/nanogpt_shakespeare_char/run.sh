#!/usr/bin/env bash
set -euo pipefail
# The commands of experiments/nanogpt_shakespeare_char/README.md behind results.json; run from the repository root.
for seed in 0 1 2; do
  JAXLAB_DATA_DIR=../shared/data python launch.py --config configs/shakespeare_char/gpt.py \
    --workdir runs/gpt-s$seed --config.seed=$seed
done
# The README gives the RNNs as the GPT's command with --config configs/shakespeare_char/lstm.py[:gru].
for seed in 0 1 2; do
  JAXLAB_DATA_DIR=../shared/data python launch.py --config configs/shakespeare_char/lstm.py \
    --workdir runs/lstm-s$seed --config.seed=$seed
  JAXLAB_DATA_DIR=../shared/data python launch.py --config configs/shakespeare_char/lstm.py:gru \
    --workdir runs/gru-s$seed --config.seed=$seed
done
# Needs an accelerator, not run here (nanoGPT's 1.4697):
# JAXLAB_DATA_DIR=../shared/data python launch.py --config configs/shakespeare_char/gpt_gpu.py --workdir runs/gpt-gpu-s0
