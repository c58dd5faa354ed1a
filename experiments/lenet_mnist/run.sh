#!/usr/bin/env bash
set -euo pipefail
# The command of experiments/lenet_mnist/README.md behind results.json, for seeds 0, 1, 2; run from the repository root.
for seed in 0 1 2; do
  JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds \
    python launch.py --config configs/mnist/lenet5.py --workdir runs/lenet5_s$seed --config.seed=$seed
done
