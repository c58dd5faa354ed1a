"""Training curves from metrics.jsonl: a metric against steps, its mean over replicas with the band from the
lowest to the highest replica, as <workdir>/<metric>.png. Tasks name the metrics worth one in `curve_metrics`."""

from __future__ import annotations

import numpy as np
from etils import epath

from jaxlab.observe.logging import METRICS_FILE, parse_line


def read(workdir: str, metric: str, split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `metric` in `split`'s records, one column per replica; the last record of a step
  wins (a resumed run may have logged it twice)."""
  rows = {}
  path = epath.Path(workdir) / METRICS_FILE
  for line in path.read_text().splitlines() if path.exists() else ():
    record = parse_line(line)
    if record and record['split'] == split and metric in record:
      rows[record['step']] = record.get(f'{metric}_replicas', [record[metric]])
  steps = sorted(rows)
  return np.asarray(steps, np.int64), np.asarray([rows[s] for s in steps], np.float64).reshape(len(steps), -1 if steps else 0)


def write(workdir: str, metric: str) -> str | None:
  """Plots `metric`'s training curve; returns the PNG's path, or None when nothing was logged."""
  steps, values = read(workdir, metric)
  if not len(steps):
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  replicas = values.shape[1]
  ax.plot(steps, values.mean(1), label=f'mean of {replicas} replicas' if replicas > 1 else metric)
  if replicas > 1:
    ax.fill_between(steps, values.min(1), values.max(1), alpha=0.25, label='lowest to highest replica')
    ax.legend(loc='best')
  ax.set_xlabel('step')
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = epath.Path(workdir) / f'{metric}.png'
  with path.open('wb') as f:
    fig.savefig(f, dpi=120)
  plt.close(fig)
  return str(path)
