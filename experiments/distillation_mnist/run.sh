#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/distillation_mnist/README.md (run at commit 8ccc349), from the repository root.
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for s in 0 1 2; do
  python launch.py --config configs/mnist/hinton.py:teacher   --config.seed=$s --workdir runs/hinton-teacher-s$s
  python launch.py --config configs/mnist/hinton.py:student   --config.seed=$s --workdir runs/hinton-student-s$s
  python launch.py --config configs/mnist/hinton.py:distilled --config.seed=$s --workdir runs/hinton-distilled-s$s \
      --config.distill.teacher=runs/hinton-teacher-s$s
done
