#!/usr/bin/env bash
set -euo pipefail
# The commands of experiments/transfer_mnist_to_fashion/README.md behind results.json; run from the repository
# root. Each sweep runs 1 %, 10 % and 100 % of the labels for seeds 0, 1, 2 (configs/fashion_mnist/transfer.py).
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
python launch.py --config configs/mnist/lenet5.py --workdir runs/mnist-lenet5
for m in probe finetune; do
  python launch.py sweep --config configs/fashion_mnist/transfer.py:$m --workdir runs/transfer-$m \
      --config.init.workdir=runs/mnist-lenet5
done
python launch.py sweep --config configs/fashion_mnist/transfer.py:scratch --workdir runs/transfer-scratch
