"""20 GAT (or GCN) seeds as one program against 20 separate runs, one process, and whether replica r is run r.

  python experiments/planetoid_cora/bench_replicas.py [--model=gat] [--seeds=20] [--out=FILE.json]

Each side trains with the config's early stopping and per-epoch evaluation: the one program until
its last replica stops (`num_replicas`, `replica_group` of the config), the separate runs each until
its own stop, one after another in this process (each builds and compiles its own program, as a new
`launch.py` would, but without Python's start-up). Reported: wall seconds of each side (train.train's
`train_seconds` summed, and the whole call), and per seed the best epoch and test accuracy of both.
Needs $JAXLAB_DATA_DIR/cora.
"""

import argparse
import json
import os
import tempfile
import time

from jaxlab import config as config_lib
from jaxlab.run import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed_run(config, workdir):
  began = time.perf_counter()
  summary = train.train(config, workdir)
  return time.perf_counter() - began, summary


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', default='gat', choices=('gat', 'gcn'))
  parser.add_argument('--seeds', type=int, default=20)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  config = config_lib.load(os.path.join(ROOT, 'configs', 'cora', f'{args.model}.py'))
  with tempfile.TemporaryDirectory() as root:
    together = config.copy_and_resolve_references()
    together.num_replicas = args.seeds
    wall, summary = timed_run(together, os.path.join(root, 'together'))
    result = {'model': args.model, 'seeds': args.seeds, 'replica_group': config.replica_group,
              'together_seconds': wall, 'together_train_seconds': summary['train_seconds'],
              'together_best_epoch': summary['best_step_replicas'],
              'together_test_accuracy': summary['test_accuracy_replicas'], 'separate_seconds': 0.0,
              'separate_train_seconds': 0.0, 'separate_best_epoch': [], 'separate_test_accuracy': []}
    print(f'{args.seeds} seeds in one program: {wall:.1f} s', flush=True)
    for seed in range(args.seeds):
      single = config.copy_and_resolve_references()
      single.seed = seed
      wall, summary = timed_run(single, os.path.join(root, f'seed{seed}'))
      result['separate_seconds'] += wall
      result['separate_train_seconds'] += summary['train_seconds']
      result['separate_best_epoch'].append(summary['best_step'])
      result['separate_test_accuracy'].append(summary['test_accuracy'])
      print(f'seed {seed}: {wall:.1f} s, best epoch {summary["best_step"]} (together: '
            f'{result["together_best_epoch"][seed]}), test accuracy {summary["test_accuracy"]:.4f} (together: '
            f'{result["together_test_accuracy"][seed]:.4f})', flush=True)
  same_epoch = sum(a == b for a, b in zip(result['together_best_epoch'], result['separate_best_epoch']))
  same_accuracy = sum(abs(a - b) < 1e-6 for a, b in zip(result['together_test_accuracy'],
                                                       result['separate_test_accuracy']))
  result.update(same_best_epoch=same_epoch, same_test_accuracy=same_accuracy,
                speedup=result['separate_seconds'] / result['together_seconds'])
  print(f'one program {result["together_seconds"]:.1f} s | {args.seeds} separate runs '
        f'{result["separate_seconds"]:.1f} s | separate / together = {result["speedup"]:.2f} | same best epoch '
        f'{same_epoch}/{args.seeds}, same test accuracy {same_accuracy}/{args.seeds}', flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
