#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/pruning_lenet/README.md, from the repository root: the dense runs, the two seed-0
# sweeps on the validation split that chose the retraining, then the pruned runs with the chosen settings.
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for s in 0 1 2 3 4; do
  python launch.py --config configs/mnist/lenet300.py:dense --config.seed=$s --workdir runs/lenet300-dense-s$s
done
python launch.py sweep --config configs/mnist/lenet300.py:pruned --config.seed=0 \
    --config.init.workdir=runs/lenet300-dense-s0 --workdir runs/lenet300-prune-search
python launch.py sweep --config configs/mnist/lenet300.py:schedule --config.seed=0 \
    --config.init.workdir=runs/lenet300-dense-s0 --workdir runs/lenet300-prune-schedule
for s in 0 1 2 3 4; do
  python launch.py --config configs/mnist/lenet300.py:pruned --config.seed=$s --workdir runs/lenet300-pruned-s$s \
      --config.init.workdir=runs/lenet300-dense-s$s
done
