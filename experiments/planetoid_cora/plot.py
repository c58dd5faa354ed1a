"""Draws results.png from the GCN and GAT workdirs of this experiment.

  python experiments/planetoid_cora/plot.py runs/cora-gcn runs/cora-gat

Left: each replica's validation loss per epoch until its early stopping froze it, its best epoch
marked. Right: each replica's test accuracy at its best epoch (equal values stacked), beside the
paper's number.
"""

import json
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

PAPER = {'gcn': (81.5, None), 'gat': (83.0, 0.7)}  # test accuracy %, and the std over 100 runs where given


def _curves(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [r for r in map(json.loads, f) if r['split'] == 'validation']
  steps = [r['step'] for r in records]
  return steps, list(zip(*[r['loss_replicas'] for r in records]))


def main(workdirs):
  fig, axes = plt.subplots(len(workdirs), 2, figsize=(11, 3.6 * len(workdirs)), squeeze=False)
  for (curve_ax, dots_ax), workdir in zip(axes, workdirs):
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
    name, patience = config['model']['name'], config['train']['early_stopping_patience']
    steps, losses = _curves(workdir)
    for loss, best in zip(losses, summary['best_step_replicas']):
      end = steps.index(min(best + patience, steps[-1])) + 1  # where its early stopping froze it
      line, = curve_ax.plot(steps[:end], loss[:end], lw=0.8, alpha=0.6)
      curve_ax.plot(best, loss[steps.index(best)], 'o', ms=3, color=line.get_color())
    curve_ax.set(title=f'{name.upper()}: validation loss of {len(losses)} seeds (dot: best epoch)', xlabel='epoch',
                 ylabel='validation loss')
    accuracy = [round(100 * a, 1) for a in summary['test_accuracy_replicas']]
    height = [accuracy[:i].count(a) for i, a in enumerate(accuracy)]  # equal values stacked
    dots_ax.plot(accuracy, height, 'o', label=f'ours, {len(accuracy)} seeds')
    dots_ax.set_ylim(-1, max(height) + 4)
    mean = sum(accuracy) / len(accuracy)
    dots_ax.axvline(mean, color='C0', lw=2, label=f'ours, mean {mean:.1f} %')
    paper, spread = PAPER[name]
    dots_ax.axvline(paper, color='k', ls='--', label=f'paper {paper} %' + (f' ± {spread}' if spread else ''))
    if spread:
      dots_ax.axvspan(paper - spread, paper + spread, color='k', alpha=0.1)
    dots_ax.set(title=f'{name.upper()}: test accuracy at each seed\'s best epoch', xlabel='test accuracy (%)', yticks=[])
    dots_ax.legend(loc='upper left', fontsize=8)
  fig.tight_layout()
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results.png')
  fig.savefig(out, dpi=110)
  print(out)


if __name__ == '__main__':
  main(sys.argv[1:])
