#!/usr/bin/env bash
set -euo pipefail
# Commands of experiments/planetoid_cora/README.md, from the repository root; needs $JAXLAB_DATA_DIR/cora.
# 20 seeds per command in one program (num_replicas). The table's runs: commit 93b4d11.
python launch.py --config configs/cora/gcn.py --config.num_replicas=20 --workdir runs/cora-gcn
python launch.py --config configs/cora/gat.py --config.num_replicas=20 --workdir runs/cora-gat
# results.json's GAT per-seed accuracies: the together_test_accuracy of this run (commit 1fa25e9),
# which trains the same 20-seed program and then each seed separately.
python experiments/planetoid_cora/bench_replicas.py --out=experiments/planetoid_cora/bench_replicas_gat.json
