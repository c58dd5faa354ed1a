#!/usr/bin/env bash
set -euo pipefail
# The commands of experiments/transfer_mnist_to_fashion/README.md, from the repository root: the MNIST source
# model, the seed-0 searches on the validation split (configs/fashion_mnist/transfer.py:MODE_search), then seeds
# 0-4 of each mode at 1, 10 and 100 % of the labels with the chosen settings (CHOSEN in that config), and the plot.
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
python launch.py --config configs/mnist/lenet5.py --workdir runs/mnist-lenet5
for m in finetune scratch probe; do
  init=(); [ "$m" != scratch ] && init=(--config.init.workdir=runs/mnist-lenet5)
  python launch.py sweep --config "configs/fashion_mnist/transfer.py:${m}_search" --workdir "runs/transfer-search-$m" \
      --parallel=2 --config.seed=0 "${init[@]}"
done
for m in finetune scratch probe; do
  init=(); [ "$m" != scratch ] && init=(--config.init.workdir=runs/mnist-lenet5)
  python launch.py sweep --config "configs/fashion_mnist/transfer.py:$m" --workdir "runs/transfer-$m" --parallel=2 "${init[@]}"
done
python experiments/transfer_mnist_to_fashion/plot.py runs/transfer-scratch runs/transfer-finetune runs/transfer-probe
