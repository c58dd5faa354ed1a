"""Classification metrics from evaluation sums: accuracy, top-5, and per-class rates from the confusion matrix.

A ratio whose denominator is zero (e.g. precision of a class never predicted) is 0, as
scikit-learn's default `zero_division` gives; macro values are plain means over all classes.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Mapping

import numpy as np
from etils import epath

PER_CLASS = ('precision', 'recall', 'f1', 'fpr', 'fnr')


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1, false-positive and false-negative rate of each class.

  `confusion[t, p]` counts examples of true class t predicted as p.
  """
  c = np.asarray(confusion, np.float64)
  tp = np.diag(c)
  fp = c.sum(0) - tp
  fn = c.sum(1) - tp
  tn = c.sum() - tp - fp - fn
  precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
  return {'precision': precision, 'recall': recall, 'f1': _ratio(2 * precision * recall, precision + recall),
          'fpr': _ratio(fp, fp + tn), 'fnr': _ratio(fn, fn + tp)}


def summarize(sums: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Means (sum / count) of an eval_step's summed outputs, plus macro rates if a confusion matrix is there.

  Leading axes (one per vmapped replica) are kept; for one run every value is a 0-d array.
  """
  count = np.asarray(sums['count'], np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):  # a replica not evaluated (stopped) counts 0: NaN
    means = {k: np.asarray(v, np.float64) / count for k, v in sums.items() if k not in ('count', 'confusion')}
  if 'confusion' in sums:
    means.update(macro_rates(sums['confusion']))
  return means


Summarize = Callable[[Mapping[str, Any]], dict[str, np.ndarray]]


def _floats(values: Mapping[str, np.ndarray]) -> dict[str, float]:
  return {k: float(v) for k, v in values.items()}


def report(sums: Mapping[str, Any], summary: Summarize) -> dict[str, Any]:
  """Everything about one split as JSON data: the scalars, per-class rates and the confusion matrix."""
  if 'confusion' not in sums:
    return _floats(summary(sums))
  confusion = np.asarray(sums['confusion'])
  rates = per_class(confusion)
  return {**_floats(summary(sums)), 'classes': [str(i) for i in range(len(confusion))], 'per_class': {k: v.tolist() for k, v in rates.items()},
          'confusion_matrix': confusion.astype(np.int64).tolist()}


def plot_confusion(confusion: np.ndarray, path: str, title: str) -> None:
  """Writes the row-normalised confusion matrix (counts in the cells for up to 20 classes) as a PNG."""
  import matplotlib
  matplotlib.use('Agg')  # files only: no display on training machines
  import matplotlib.pyplot as plt
  confusion = np.asarray(confusion, np.float64)
  n = len(confusion)
  rows = _ratio(confusion, confusion.sum(1, keepdims=True))
  fig, ax = plt.subplots(figsize=(min(4 + 0.5 * n, 12),) * 2)
  image = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046, label='fraction of the true class')
  if n <= 20:
    names = [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    for t in range(n):
      for p in range(n):
        ax.text(p, t, int(confusion[t, p]), ha='center', va='center', fontsize=7,
                color='white' if rows[t, p] > 0.5 else 'black')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, format='png', dpi=100)
  plt.close(fig)
  epath.Path(path).write_bytes(image.getvalue())  # also into a bucket (gs://)


def save(workdir: str, split: str, sums: Mapping[str, Any], step: int, summary: Summarize = summarize) -> list[str]:
  """Writes <workdir>/eval_<split>.json and, with a confusion matrix, confusion_<split>.png; returns the paths.

  `summary` turns sums into metrics (a task's own rule). Sums with a leading replica axis
  (vmapped seeds) are reported per replica; the plot shows their sum.
  """
  json_path = str(epath.Path(workdir) / f'eval_{split}.json')
  sums = {k: np.asarray(v) for k, v in sums.items()}
  if sums['count'].ndim:
    replicas = [{k: v[r] for k, v in sums.items()} for r in range(len(sums['count']))]
    data = {'step': step, 'split': split, 'replicas': [report(s, summary) for s in replicas]}
    sums = {k: v.sum(0) for k, v in sums.items()}
  else:
    data = {'step': step, 'split': split, **report(sums, summary)}
  epath.Path(json_path).write_text(json.dumps(data, indent=1))
  if 'confusion' not in sums:
    return [json_path]
  png_path = str(epath.Path(workdir) / f'confusion_{split}.png')
  plot_confusion(np.asarray(sums['confusion']), png_path, f'{split} confusion matrix, step {step}')
  return [json_path, png_path]


def macro_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Macro precision/recall/F1/FPR/FNR; leading axes (e.g. one per vmapped replica) are kept."""
  confusion = np.asarray(confusion)
  flat = confusion.reshape(-1, *confusion.shape[-2:])
  rates = [per_class(c) for c in flat]
  return {f'macro_{k}': np.array([r[k].mean() for r in rates]).reshape(confusion.shape[:-2]) for k in PER_CLASS}
