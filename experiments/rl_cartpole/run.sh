#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/rl_cartpole/README.md (run at commit c50c075; the first three rerun at dd2da14),
# from the repository root. Each num_replicas command trains all its seeds (config.seed + r) in one program.
python launch.py --config configs/gymnax/ppo.py --config.num_replicas=10 --workdir runs/ppo-cartpole-x10
python launch.py --config configs/gymnax/dqn.py --config.num_replicas=5 --workdir runs/dqn-cartpole-x5
python launch.py --config configs/gymnax/dqn.py:acrobot --config.num_replicas=5 --workdir runs/dqn-acrobot-x5
python launch.py --config configs/gymnax/ppo.py:space_invaders --workdir runs/ppo-space_invaders-s0
