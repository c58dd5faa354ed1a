#!/usr/bin/env bash
set -euo pipefail
# The command of experiments/custom_model/README.md behind results.json; run from the repository root.
for seed in 0 1 2; do
  python launch.py --config experiments/custom_model/config.py --config.seed=$seed --workdir runs/custom_model/s$seed
done
