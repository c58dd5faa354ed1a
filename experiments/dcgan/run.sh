#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/dcgan/README.md, from the repository root. The MNIST rows ran as written at commit
# 0f42b5a (the rule stops them long before the cap; the same values as their first runs at f854d4e, whose
# config capped training at 20,000 steps); the Fashion-MNIST headline row with today's cap of 80,000 (seeds 1-2
# continued from their c40757c runs at the 40,000 cap: the same command, run again after the cap grew, goes on
# from the checkpoint).
# The two LeNet-5 runs give the features of the Fréchet distance. (The README's `launch.py sample`
# line only draws another image grid and is left out.)
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
python launch.py --config configs/mnist/lenet5.py --workdir runs/mnist-lenet5
python launch.py --config configs/mnist/lenet5.py --config.data.tfds_name=fashion_mnist --workdir runs/fashion_mnist-lenet5
for d in mnist fashion_mnist; do for s in 0 1 2; do
  python launch.py --config configs/mnist/dcgan.py:$d --config.seed=$s --workdir runs/dcgan-$d-s$s
done; done
python experiments/dcgan/plot.py runs/dcgan
