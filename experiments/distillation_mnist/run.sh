#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/distillation_mnist/README.md, from the repository root. The table's three seeds ran at
# commit 8ccc349, when :teacher had dropout on the hidden units only for 50 epochs; at c328596 and later :teacher is
# Hinton et al. (2012)'s recipe for 100 epochs (seed 0 only so far, 92 errors).
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for s in 0 1 2; do
  python launch.py --config configs/mnist/hinton.py:teacher   --config.seed=$s --workdir runs/hinton-teacher-s$s
  python launch.py --config configs/mnist/hinton.py:student   --config.seed=$s --workdir runs/hinton-student-s$s
  python launch.py --config configs/mnist/hinton.py:distilled --config.seed=$s --workdir runs/hinton-distilled-s$s \
      --config.distill.teacher=runs/hinton-teacher-s$s
done
