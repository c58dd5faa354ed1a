#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/vae_mnist/README.md (run at commit 992f350), from the repository root.
# (The README's `launch.py sample` line only draws another image grid and is left out.)
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for s in 0 1 2; do python launch.py --config configs/mnist/vae.py:mlp --config.seed=$s --workdir runs/vae-mlp-s$s; done
python launch.py --config configs/mnist/vae.py:latent2 --workdir runs/vae-latent2-s0
