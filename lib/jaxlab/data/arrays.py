"""An in-memory dataset served as deterministic, resumable, host-sharded batches."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np

from jaxlab.data.pipeline import check_batch_sizes, eval_rows, global_rows, host_slice
from jaxlab.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


def split_off(examples: Batch, n: int) -> tuple[Batch, Batch]:
  """Splits the last `n` examples off, e.g. a validation split carved from train."""
  size = len(next(iter(examples.values())))
  if not 0 <= n < size:
    raise ConfigError(f'validation_size {n} must be in [0, {size}) for a training split of {size} examples')
  return ({k: v[:size - n] for k, v in examples.items()}, {k: v[size - n:] for k, v in examples.items()})


@dataclasses.dataclass
class ArraySource:
  """Splits of equal-length arrays ('x', 'y', ...) held in host memory.

  The training batch of step s is a slice of a permutation drawn from (seed, epoch of s), so a
  run resumed at step s sees exactly the batches an uninterrupted run would. Each process reads
  only its rows of every global batch.
  """

  splits: dict[str, Batch]
  batch_size: int
  eval_batch_size: int
  seed: int
  num_classes: int

  def __post_init__(self):
    if 'train' not in self.splits:
      raise DataError('data source has no train split')
    for name, split in self.splits.items():
      lengths = {k: len(v) for k, v in split.items()}
      if len(set(lengths.values())) != 1:
        raise DataError(f'split {name!r} has arrays of different lengths: {lengths}')
    check_batch_sizes(self.num_examples('train'), self.batch_size, self.eval_batch_size, jax.process_count())

  def num_examples(self, split: str) -> int:
    return len(next(iter(self.splits[split].values())))

  @property
  def eval_splits(self) -> list[str]:
    return [name for name in self.splits if name != 'train']

  def example_batch(self) -> Batch:
    """One example per key with a batch dimension of 1, for initialising models."""
    return {k: v[:1] for k, v in self.splits['train'].items()}

  def train_indices(self, step: int) -> np.ndarray:
    """Indices of this host's rows of the global batch for `step`."""
    rows = global_rows(self.seed, step, self.batch_size, self.num_examples('train'))
    return rows[host_slice(self.batch_size, jax.process_index(), jax.process_count())]

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    train = self.splits['train']
    step = start_step
    while True:
      idx = self.train_indices(step)
      yield {k: v[idx] for k, v in train.items()}
      step += 1

  def eval_batches(self, split: str) -> Iterator[Batch]:
    """The whole split in order, padded to full batches; 'mask' marks the real examples, 'index' their rows."""
    data, n = self.splits[split], self.num_examples(split)
    for index in range(-(-n // self.eval_batch_size)):
      rows, mask = eval_rows(index, self.eval_batch_size, n, jax.process_index(), jax.process_count())
      yield {**{k: v[rows] for k, v in data.items()}, 'mask': mask, 'index': rows.astype(np.int32)}
