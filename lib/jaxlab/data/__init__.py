"""Data sources: each yields host-local numpy batches whose order depends only on (seed, step)."""

from __future__ import annotations

import ml_collections

from jaxlab.data.arrays import ArraySource
from jaxlab.errors import ConfigError


def make_source(cfg: ml_collections.ConfigDict, seed: int) -> ArraySource:
  """The source named by `cfg.name`, e.g. 'mnist1d'."""
  from jaxlab.data import mnist1d
  loaders = {'mnist1d': mnist1d.load}
  if cfg.name not in loaders:
    raise ConfigError(f'unknown data.name {cfg.name!r}; choose from {", ".join(sorted(loaders))}')
  return loaders[cfg.name](cfg, seed)
