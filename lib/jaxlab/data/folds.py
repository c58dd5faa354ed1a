"""Stratified k-fold cross-validation folds, and stratified subsets, carved from a training split (never the test split).

`data.folds = k` (0: off) and `data.fold = i` make fold i the 'validation' split and the other
k - 1 folds the training split. Fold i of k is the same for every run seed: the assignment comes
from a fixed permutation, so runs that differ in seed are compared on the same folds.
`data.fold = -1` asks for every fold at once, one per replica (`launch.py cv`, replicas.py).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxlab.errors import ConfigError

FOLD_SEED = 0x666F6C64  # 'fold': the one permutation every run's folds come from
ALL_FOLDS = -1


def assign(labels: np.ndarray, k: int) -> np.ndarray:
  """The fold (0 .. k-1) of every example: each class's examples, in a fixed random order, are
  dealt round-robin after the previous class's, so the folds' sizes differ by at most one and
  so do their counts of each class."""
  order = np.random.default_rng(FOLD_SEED).permutation(len(labels))
  by_class = order[np.argsort(labels[order], kind='stable')]
  folds = np.empty(len(labels), np.int64)
  folds[by_class] = np.arange(len(labels)) % k
  return folds


def check(cfg: ml_collections.ConfigDict, num_train: int) -> None:
  """One-line errors for fold settings that cannot carve this training split."""
  k, fold = cfg.folds, cfg.fold
  if k == 0:
    return
  if k < 2 or k > num_train:
    raise ConfigError(f'data.folds must be 0 (off) or in [2, {num_train}] for a training split of {num_train} '
                      f'examples, got {k}')
  if cfg.validation_size:
    raise ConfigError(f'data.folds {k} and data.validation_size {cfg.validation_size} both carve a validation '
                      'split; set one of them to 0')
  if not 0 <= fold < k:
    raise ConfigError(f'data.fold must be in [0, {k}) for data.folds {k}, got {fold}'
                      + (' (-1, every fold at once, is for `launch.py cv`)' if fold == ALL_FOLDS else ''))


def rows(labels: np.ndarray, k: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
  """(training rows, validation rows) of fold `fold` of `k`, each in increasing order."""
  folds = assign(labels, k)
  return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def subset(labels: np.ndarray, fraction: float) -> np.ndarray:
  """Increasing rows of a stratified `fraction` of the examples: of each class, the first round(fraction * n)
  (at least one) of the same fixed random order the folds use, so a smaller fraction is a subset of a larger."""
  if not 0 < fraction <= 1:
    raise ConfigError(f'data.train_fraction must be in (0, 1], got {fraction}')
  order = np.random.default_rng(FOLD_SEED).permutation(len(labels))
  kept = [order[labels[order] == c][:max(1, round(fraction * np.sum(labels == c)))] for c in np.unique(labels)]
  return np.sort(np.concatenate(kept))
