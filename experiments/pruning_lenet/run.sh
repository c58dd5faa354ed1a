#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/pruning_lenet/README.md (dense runs at commit 5828f8f, pruned at 55a3da5), from the repository root.
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for s in 0 1 2; do
  python launch.py --config configs/mnist/lenet300.py:dense  --config.seed=$s --workdir runs/lenet300-dense-s$s
  python launch.py --config configs/mnist/lenet300.py:pruned --config.seed=$s --workdir runs/lenet300-pruned-s$s \
      --config.init.workdir=runs/lenet300-dense-s$s
done
