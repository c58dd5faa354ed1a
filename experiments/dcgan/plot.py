"""Draws frechet_vs_steps_<dataset>.png from the DCGAN runs' evaluation logs and prints their table.

  python experiments/dcgan/plot.py runs/dcgan   # reads runs/dcgan-<dataset>-s<seed>/

One figure per dataset that has runs: each seed's validation Fréchet distance against steps (solid)
and its test distance (dotted), the step early stopping kept marked, the validation floor dashed.
"""

import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab.observe import curves  # noqa: E402

DATASETS = {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}


def _runs(prefix: str, dataset: str) -> dict[int, str]:
  """{seed: workdir} of prefix-<dataset>-s<seed>."""
  found = {}
  for workdir in glob.glob(f'{prefix}-{dataset}-s*'):
    match = re.fullmatch(rf'{re.escape(prefix)}-{dataset}-s(\d+)', workdir)
    if match:
      found[int(match.group(1))] = workdir
  return dict(sorted(found.items()))


def _row(seed: int, workdir: str) -> str:
  steps, validation = curves.read(workdir, 'frechet', 'validation')
  best = int(steps[validation[:, 0].argmin()])
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return (f'| {seed} | {best:,} | {summary["step"]:,} | {validation[:, 0].min():.2f} | '
          f'{summary["test_frechet"]:.2f} | {summary["train_seconds"]:.0f} |')


def _figure(dataset: str, title: str, runs: dict[int, str]) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  print(f'\n{title}\n\n| seed | best validation step | last step | validation FD | test FD (kept state) | '
        f'training s (last launch) |\n|---|---|---|---|---|---|')
  floor = None
  for seed, workdir in runs.items():
    steps, validation = curves.read(workdir, 'frechet', 'validation')
    if not os.path.exists(os.path.join(workdir, 'summary.json')):
      print(f'| {seed} | (running: {len(steps)} evaluations so far) |')
      continue
    test_steps, test = curves.read(workdir, 'frechet', 'test')
    line, = ax.plot(steps, validation[:, 0], label=f'seed {seed} validation')
    ax.plot(test_steps, test[:, 0], ':', color=line.get_color(), label=f'seed {seed} test')
    best = validation[:, 0].argmin()
    ax.plot(steps[best], validation[best, 0], 'o', color=line.get_color())
    print(_row(seed, workdir))
    _, floor = curves.read(workdir, 'frechet_floor', 'validation')  # the same for every seed
  if floor is None:
    return
  ax.axhline(floor[0, 0], color='gray', linestyle='--', label='validation floor (train vs validation)')
  ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('Fréchet distance (LeNet-5 features)')
  ax.set_title(f'DCGAN on {title}')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=7)
  fig.tight_layout()
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'frechet_vs_steps_{dataset}.png')
  fig.savefig(out, dpi=100)
  print(f'\nSaved {out}')


def main(prefix: str) -> None:
  for dataset, title in DATASETS.items():
    runs = _runs(prefix, dataset)
    if runs:
      _figure(dataset, title, runs)
    else:
      print(f'\n{title}: no runs {prefix}-{dataset}-s<seed>')


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else 'runs/dcgan')
