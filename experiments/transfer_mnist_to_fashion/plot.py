"""Draws results.png from the three sweeps of this experiment: test accuracy against the fraction of labels.

  python experiments/transfer_mnist_to_fashion/plot.py runs/transfer-scratch runs/transfer-finetune runs/transfer-probe

Each mode's mean over seeds with error bars of one sample standard deviation, the seeds as dots.
"""

import csv
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def _accuracies(sweep_dir):
  """{fraction: [test accuracy of each seed]} from the sweep's results.csv."""
  by_fraction = defaultdict(list)
  with open(os.path.join(sweep_dir, 'results.csv')) as f:
    for row in csv.DictReader(f):
      by_fraction[float(row['data.train_fraction'])].append(100 * float(row['test_accuracy']))
  return dict(sorted(by_fraction.items()))


def main(sweep_dirs):
  fig, ax = plt.subplots(figsize=(6, 4))
  for sweep_dir in sweep_dirs:
    mode = os.path.basename(os.path.normpath(sweep_dir)).removeprefix('transfer-')
    accuracies = _accuracies(sweep_dir)
    fractions = [100 * f for f in accuracies]
    means = [statistics.mean(a) for a in accuracies.values()]
    stds = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accuracies.values()]
    bars = ax.errorbar(fractions, means, yerr=stds, marker='o', capsize=3, label=mode)
    for fraction, seeds in zip(fractions, accuracies.values()):
      ax.scatter([fraction] * len(seeds), seeds, s=10, color=bars.lines[0].get_color(), alpha=0.5)
  ax.set_xscale('log')
  ax.set_xlabel('Fashion-MNIST training labels used (%)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title('LeNet-5 on Fashion-MNIST: from MNIST or from scratch')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results.png')
  fig.savefig(out, dpi=100)
  print(f'Saved {out}')


if __name__ == '__main__':
  main(sys.argv[1:])
