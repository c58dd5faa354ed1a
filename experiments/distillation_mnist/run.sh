#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/distillation_mnist/README.md, from the repository root: the table's five seeds ran at
# commit 7f44d76 (teacher seed 0 at c328596), one command at a time. The earlier teacher of the README's last
# rows (dropout on the hidden units only, 50 epochs) is `hinton.py:teacher` as of commit 8ccc349.
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for s in 0 1 2 3 4; do
  python launch.py --config configs/mnist/hinton.py:teacher   --config.seed=$s --workdir runs/hinton-teacher-s$s
  python launch.py --config configs/mnist/hinton.py:student   --config.seed=$s --workdir runs/hinton-student-s$s
  python launch.py --config configs/mnist/hinton.py:distilled --config.seed=$s --workdir runs/hinton-distilled-s$s \
      --config.distill.teacher=runs/hinton-teacher-s$s
done
