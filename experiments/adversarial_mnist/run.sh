#!/usr/bin/env bash
set -euo pipefail
# The commands of experiments/adversarial_mnist/README.md ("Commands") behind results.json; run from the repository
# root. The README's `launch.py explain` commands make the attribution maps, not these numbers.
export JAXLAB_DATA_DIR=../shared/data TFDS_DATA_DIR=/tmp/jaxlab_tfds
for seed in 0 1 2; do for v in natural fgsm; do
  python launch.py --config configs/mnist/logistic.py:$v --config.seed=$seed --workdir runs/logistic-$v-s$seed
  python launch.py attack --workdir runs/logistic-$v-s$seed --eps=0.1,0.2,0.25,0.3 --pgd_steps=100 --pgd_restarts=10
done; done
python launch.py --config configs/mnist/madry_cnn.py:natural --workdir runs/madry-natural-s0 \
    --config.train.num_steps=5000 --config.train.eval_every=5000 --config.train.log_every=250 \
    --config.train.checkpoint_every=1000 --config.eval.attack_eps="()"
# One hour of the 100k steps: timeout's SIGTERM stops the run at a checkpoint (step 1051 in the README's run) and
# timeout then exits 124, which is the expected end here.
timeout -s TERM 3600 python launch.py --config configs/mnist/madry_cnn.py:pgd --workdir runs/madry-pgd-s0 \
    --config.train.log_every=50 --config.train.checkpoint_every=100 --config.eval.attack_eps="()" || test $? -eq 124
python launch.py attack --workdir runs/madry-natural-s0 --num_examples=1000 --pgd_steps=100 --pgd_restarts=1
python launch.py attack --workdir runs/madry-pgd-s0 --num_examples=1000 --pgd_steps=100 --pgd_restarts=2
# Needs an accelerator, not run here (Madry et al.'s 89.3 %): the same command without `timeout` runs on to 100k
# steps, then `python launch.py attack --workdir runs/madry-pgd-s0 --pgd_steps=100 --pgd_restarts=20`.
