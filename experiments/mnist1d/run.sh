#!/usr/bin/env bash
set -euo pipefail
# The commands of experiments/mnist1d/README.md ("Commands") behind results.json; run from the repository root.
for m in logistic mlp cnn gru; do
  for seed in $(seq 0 11); do
    python launch.py --config=configs/mnist1d/$m.py --config.seed=$seed --workdir=runs/mnist1d-seeds/$m-s$seed
  done
done
