#!/usr/bin/env bash
set -euo pipefail
# The commands of experiments/fashion_mnist/README.md behind results.json; run from the repository root.
for seed in 0 1 2; do
  JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds \
    python launch.py --config configs/fashion_mnist/mlp.py --workdir runs/fmnist_mlp_s$seed --config.seed=$seed
  JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds \
    python launch.py --config configs/fashion_mnist/cnn.py --workdir runs/fmnist_cnn_s$seed --config.seed=$seed
done
for seed in 0 1 2; do
  JAXLAB_DATA_DIR=../shared/data python launch.py --config configs/fashion_mnist/vit.py \
    --workdir runs/fmnist_vit_s$seed --config.seed=$seed
done
