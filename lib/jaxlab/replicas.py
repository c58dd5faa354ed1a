"""Many runs in one program: `config.num_replicas` seeds trained by one vmapped, jitted step.

Replica r is the run with seed `config.seed + r`: its own initialisation and its own data
order, so its numbers match a separate run with that seed (within float tolerance).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np

from jaxlab import metrics
from jaxlab.data import Batch, Source
from jaxlab.state import TrainState
from jaxlab.tasks.base import Metrics, Task


def init_keys(seed: int, num_replicas: int) -> jax.Array:
  """PRNGKey(seed + r) for each replica r, stacked."""
  return jax.numpy.stack([jax.random.PRNGKey(seed + r) for r in range(num_replicas)])


@dataclasses.dataclass
class ReplicatedSource:
  """Stacks the training batches of per-seed copies of a source: arrays of (replicas, batch, ...).

  Evaluation batches are shared: every replica sees the same examples. A `full_batch` source (the
  whole dataset every step, whatever the seed) shares its training batches too.
  """

  base: Source
  num_replicas: int

  def __post_init__(self):
    self._copies = [] if self.full_batch else [dataclasses.replace(self.base, seed=self.base.seed + r)
                                               for r in range(self.num_replicas)]

  @property
  def num_classes(self) -> int:
    return self.base.num_classes

  @property
  def full_batch(self) -> bool:
    return getattr(self.base, 'full_batch', False)

  @property
  def eval_splits(self) -> list[str]:
    return self.base.eval_splits

  def example_batch(self) -> Batch:
    return self.base.example_batch()

  def eval_batches(self, split: str) -> Iterator[Batch]:
    return self.base.eval_batches(split)

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    if self.full_batch:
      yield from self.base.train_batches(start_step)
      return
    for batches in zip(*(copy.train_batches(start_step) for copy in self._copies)):
      yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}


@dataclasses.dataclass(frozen=True)
class ReplicatedTask:
  """A task whose state has a leading replica axis; every function is the base one under vmap."""

  base: Task
  shared_batches: bool = False  # every replica trains on the same batch (a full-batch source)

  def init(self, rngs: jax.Array, batch: Batch) -> TrainState:
    return jax.vmap(self.base.init, in_axes=(0, None))(rngs, batch)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    return jax.vmap(self.base.train_step, in_axes=(0, None if self.shared_batches else 0))(state, batch)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    return jax.vmap(self.base.eval_step, in_axes=(0, None))(state, batch)

  def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base task's rule; it works elementwise, so the replica axis is kept."""
    return getattr(self.base, 'summarize', metrics.summarize)(sums)
