"""`launch.py cv`: k-fold cross-validation of a config as one program of k replicas.

Replica r trains on every fold but r (seed config.seed + r) and is validated on fold r
(data/folds.py); one vmapped step trains them all. The report is the mean and sample standard
deviation over folds of every validation (and test) metric, saved as <workdir>/cv.json. Where k
replicas do not fit on the devices, `launch.py sweep` over data.fold = 0 .. k-1 trains the same
folds one run at a time.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath

from jaxlab.data import folds
from jaxlab.errors import ConfigError
from jaxlab.run import train

RESULTS_FILE = 'cv.json'
FOLD_SOURCES = ('mnist1d', 'tfds', 'standin')  # the data sources that carve folds


def fold_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
  """`config` with k folds, all trained at once: data.fold -1 and k replicas."""
  if k < 2:
    raise ConfigError(f'--folds must be at least 2, got {k}')
  if config.data.name not in FOLD_SOURCES:
    raise ConfigError(f'data {config.data.name!r} has no k-fold split; cv works on {", ".join(FOLD_SOURCES)} data')
  if config.num_replicas != 1:
    raise ConfigError(f'cv makes one replica per fold; leave num_replicas at 1 (got {config.num_replicas})')
  if config.data.get('validation_size', 0):
    raise ConfigError('cv validates each fold on the fold itself; leave data.validation_size at 0 (got '
                      f'{config.data.validation_size})')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.folds, config.data.fold, config.num_replicas = k, folds.ALL_FOLDS, k
  return config


def summarize(summary: dict[str, Any], k: int) -> dict[str, Any]:
  """Per-fold values of every evaluated metric, with mean and sample std over the folds."""
  metrics = {}
  for key, values in summary.items():
    if key.endswith('_replicas') and key.split('_')[0] in ('validation', 'test') and len(values) == k:
      values = np.asarray(values, np.float64)
      metrics[key[:-len('_replicas')]] = {'folds': values.tolist(), 'mean': float(values.mean()),
                                          'std': float(values.std(ddof=1))}
  return {'folds': k, 'step': summary['step'], 'metrics': metrics}


def run(config: ml_collections.ConfigDict, k: int, workdir: str, restart: bool = False) -> dict[str, Any]:
  """Trains the k folds as one run in `workdir`; returns the report also written to cv.json."""
  summary = train.train(fold_config(config, k), workdir, restart=restart)
  report = {**summarize(summary, k), 'preempted': summary['preempted']}
  if not summary['preempted']:  # a stopped run has no evaluation: an earlier cv.json stays as it was
    (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(report, indent=1))
  return report


def format_table(report: dict[str, Any]) -> str:
  k = report['folds']
  rows = [f'| metric | mean ± std over {k} folds | ' + ' | '.join(f'fold {i}' for i in range(k)) + ' |',
          '|---|---|' + '---|' * k]
  for name, entry in sorted(report['metrics'].items()):
    rows.append(f'| {name} | {entry["mean"]:.4f} ± {entry["std"]:.4f} | '
                + ' | '.join(f'{v:.4f}' for v in entry['folds']) + ' |')
  return '\n'.join(rows)


def define_command() -> Callable[[Any], None]:
  """`cv`: stratified k-fold cross-validation of the config, the folds as replicas of one program."""
  num_folds = flags.DEFINE_integer('folds', 5, 'Number of folds k.')

  def command(invocation: Any) -> None:
    workdir = invocation.workdir('cv-')
    fold_config(invocation.config, num_folds.value)  # a refused setting is the only line printed
    lead = jax.process_index() == 0  # every process of a multi-process job would print the same
    if lead:
      print(invocation.config, flush=True)
    report = run(invocation.config, num_folds.value, workdir, restart=invocation.restart)
    if lead and report['preempted']:
      print(f'Stopped at step {report["step"]}; run the same command to resume ({RESULTS_FILE} not written)')
    elif lead:
      print(f'{report["folds"]}-fold cross-validation, step {report["step"]}:')
      print(format_table(report))
      print(f'Saved {os.path.join(workdir, RESULTS_FILE)}', flush=True)
  return command
