"""Data sources: each yields host-local numpy batches whose order depends only on (seed, step)."""

from __future__ import annotations

import importlib
from typing import Iterator, Protocol

import ml_collections
import numpy as np

from jaxlab.errors import ConfigError

Batch = dict[str, np.ndarray]


class Source(Protocol):
  """What the loop reads from a data source; every wrapper (replicas.ReplicatedSource) spells it out.

  Optional: `full_batch = True` for a source whose every batch is the whole dataset, the same for
  every step and seed (a graph): the loop replicates it on every device, replicas share it, and
  data.batch_size is not split over devices.
  """

  num_classes: int

  @property
  def eval_splits(self) -> list[str]:
    ...

  def example_batch(self) -> Batch:
    """One training example with a batch dimension, for initialising models (shapes matter)."""

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """This host's rows of the global batches of steps start_step, start_step + 1, ..."""

  def eval_batches(self, split: str) -> Iterator[Batch]:
    """The whole split in order, padded to full batches; 'mask' marks the real examples and, where a source
    gives it, 'index' their rows in the split (per-example randomness that no batching changes)."""


SOURCE_MODULES = {'mnist1d': 'mnist1d', 'tfds': 'vision', 'standin': 'vision', 'text': 'text',
                  'planetoid': 'planetoid', 'episodes': 'episodes'}  # data.name -> its module of jaxlab.data


def check(cfg: ml_collections.ConfigDict) -> None:
  """What can be checked of the `data` block before any file is read: the name, and the source's own `check`."""
  if cfg.name not in SOURCE_MODULES:
    raise _unknown_source(cfg.name)
  module = importlib.import_module(f'jaxlab.data.{SOURCE_MODULES[cfg.name]}')
  getattr(module, 'check', lambda _: None)(cfg)


def make_source(cfg: ml_collections.ConfigDict, seed: int, workdir: str | None = None) -> Source:
  """The source named by `cfg.name`: 'mnist1d', 'tfds' (image datasets), 'standin' (test images), 'text',
  'planetoid' (a citation graph) or 'episodes' (reinforcement learning: the environment is in the task).

  `workdir`: where a source keeps what resuming and sampling must reuse (the text vocabulary).
  """
  # Imported on demand: the default MNIST-1D job must not pay for grain and TFDS imports.
  if cfg.name == 'mnist1d':
    from jaxlab.data import mnist1d
    return mnist1d.load(cfg, seed)
  if cfg.name in ('tfds', 'standin'):
    from jaxlab.data import vision
    return vision.load(cfg, seed)
  if cfg.name == 'text':
    from jaxlab.data import text
    return text.load(cfg, seed, workdir)
  if cfg.name == 'planetoid':
    from jaxlab.data import planetoid
    return planetoid.load(cfg)
  if cfg.name == 'episodes':
    from jaxlab.data import episodes
    return episodes.EpisodeSource(cfg.eval_episodes)  # no seed: its batches are the same for every run
  raise _unknown_source(cfg.name)


def _unknown_source(name: str) -> ConfigError:
  return ConfigError(f'unknown data.name {name!r}; choose from {", ".join(sorted(SOURCE_MODULES))}')
