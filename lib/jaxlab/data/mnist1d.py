"""MNIST-1D (Greydanus 2020), generated locally by the `mnist1d` package: no download."""

from __future__ import annotations

import contextlib
import functools
import io

import ml_collections
import numpy as np

from jaxlab.data import folds
from jaxlab.data.arrays import ArraySource, split_off
from jaxlab.errors import ConfigError


@functools.lru_cache(maxsize=4)
def generate(num_samples: int = 5000, train_split: float = 0.8) -> dict[str, np.ndarray]:
  """The dataset from mnist1d's own generator and default arguments (4000 train / 1000 test).

  Cached per process (read-only arrays): generating takes 3-4 s on 2 cores, and several runs in one
  process (tests, `bench --bench_replicas`) would each pay it.
  """
  from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: keep it lazy
  args = get_dataset_args()
  args.num_samples, args.train_split = num_samples, train_split
  with contextlib.redirect_stdout(io.StringIO()):
    data = make_dataset(args)
  for value in data.values():
    if isinstance(value, np.ndarray):
      value.setflags(write=False)
  return data


def load(cfg: ml_collections.ConfigDict, seed: int) -> ArraySource:
  if not 0 < cfg.train_split < 1:
    raise ConfigError(f'data.train_split must be in (0, 1), the fraction of examples used for training; '
                      f'got {cfg.train_split}')
  if int(cfg.num_samples * cfg.train_split) < 1 or cfg.num_samples - int(cfg.num_samples * cfg.train_split) < 1:
    raise ConfigError(f'data.num_samples {cfg.num_samples} with train_split {cfg.train_split} leaves an empty '
                      'train or test split')
  raw = generate(cfg.num_samples, cfg.train_split)
  train = {'x': raw['x'].astype(np.float32), 'y': raw['y'].astype(np.int32)}
  splits = {'test': {'x': raw['x_test'].astype(np.float32), 'y': raw['y_test'].astype(np.int32)}}
  if cfg.get('folds', 0):
    folds.check(cfg, len(train['y']))
    train_rows, validation_rows = folds.rows(train['y'], cfg.folds, cfg.fold)
    train, splits['validation'] = ({k: v[train_rows] for k, v in train.items()},
                                   {k: v[validation_rows] for k, v in train.items()})
  elif cfg.validation_size:
    train, splits['validation'] = split_off(train, cfg.validation_size)
  return ArraySource({'train': train, **splits}, cfg.batch_size, cfg.eval_batch_size, seed, num_classes=10)
