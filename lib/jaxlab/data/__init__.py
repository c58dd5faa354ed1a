"""Data sources: each yields host-local numpy batches whose order depends only on (seed, step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from jaxlab.data.arrays import ArraySource
from jaxlab.errors import ConfigError

if TYPE_CHECKING:
  from jaxlab.data.pipeline import GrainSource


def make_source(cfg: ml_collections.ConfigDict, seed: int) -> ArraySource | GrainSource:
  """The source named by `cfg.name`: 'mnist1d', 'tfds' (image datasets) or 'standin' (test images)."""
  # Imported on demand: the default MNIST-1D job must not pay for grain and TFDS imports.
  if cfg.name == 'mnist1d':
    from jaxlab.data import mnist1d
    return mnist1d.load(cfg, seed)
  if cfg.name in ('tfds', 'standin'):
    from jaxlab.data import vision
    return vision.load(cfg, seed)
  raise ConfigError(f'unknown data.name {cfg.name!r}; choose from mnist1d, standin, tfds')
