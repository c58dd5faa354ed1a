"""Many runs in one program: `config.num_replicas` seeds trained by one jitted step.

Replica r is the run with seed `config.seed + r`: its own initialisation and its own data
order, so its numbers match a separate run with that seed (within float tolerance). With
`data.fold = -1` (k-fold cross-validation, `launch.py cv`) replica r also trains on fold r's
training split and is validated on fold r.

`config.replica_group` replicas are computed together by jax.vmap, the groups one after another
(lax.map); 0: all in one group. vmap batches small matmuls well, but on CPU the vmapped gathers and
segment sums of a graph model outgrow the cache (20 GAT replicas: 2.6x the time per replica of one
run, measured), where one replica at a time keeps one run's speed. With groups of one, a replica
whose early stopping has ended is skipped (lax.cond); inside a vmapped group it is computed and
its result dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab import data
from jaxlab.data import Batch, Source, folds
from jaxlab.errors import ConfigError
from jaxlab.observe import metrics
from jaxlab.tasks.base import Metrics, Task
from jaxlab.tasks.state import TrainState


def init_keys(seed: int, num_replicas: int) -> jax.Array:
  """PRNGKey(seed + r) for each replica r, stacked."""
  return jax.numpy.stack([jax.random.PRNGKey(seed + r) for r in range(num_replicas)])


def all_folds(config: ml_collections.ConfigDict) -> bool:
  """Whether the run is k-fold cross-validation with one fold per replica (data.fold = -1)."""
  if not config.data.get('folds', 0) or config.data.get('fold', 0) != folds.ALL_FOLDS:
    return False
  if config.num_replicas != config.data.folds:
    raise ConfigError(f'data.fold -1 trains every fold as a replica: num_replicas must be data.folds '
                      f'{config.data.folds}, got {config.num_replicas}')
  return True


def fold_data(config: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
  block = config.data.copy_and_resolve_references()
  block.fold = fold
  return block


def base_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data block of replica 0 (fold 0 when every fold is a replica)."""
  return fold_data(config, 0) if all_folds(config) else config.data


def replicate(config: ml_collections.ConfigDict, base: Source, workdir: str | None) -> 'ReplicatedSource':
  """`base` (replica 0's source) stacked with replica r's for every r: seed + r, and fold r under data.fold -1."""
  if not all_folds(config):
    return ReplicatedSource(base, config.num_replicas)
  copies = [base] + [data.make_source(fold_data(config, r), config.seed + r, workdir)
                     for r in range(1, config.num_replicas)]
  return ReplicatedSource(base, config.num_replicas, copies, per_replica_splits=('validation',))


@dataclasses.dataclass
class ReplicatedSource:
  """Stacks the training batches of per-seed copies of a source: arrays of (replicas, batch, ...).

  Evaluation batches are shared, every replica sees the same examples, except in the splits named
  `per_replica_splits`, whose batches are stacked like training batches (a fold's validation
  split); a copy with fewer batches there is padded with batches of mask 0. A `full_batch` source
  (the whole dataset every step, whatever the seed) shares its training batches too.
  """

  base: Source
  num_replicas: int
  copies: Sequence[Source] | None = None  # replica r's source; default: `base` with seed + r
  per_replica_splits: tuple[str, ...] = ()

  def __post_init__(self):
    if self.copies is None:
      self.copies = [] if self.full_batch else [dataclasses.replace(self.base, seed=self.base.seed + r)
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
    if split not in self.per_replica_splits:
      yield from self.base.eval_batches(split)
      return
    per_copy = [list(copy.eval_batches(split)) for copy in self.copies]
    blank = {**per_copy[0][0], 'mask': np.zeros_like(per_copy[0][0]['mask'])}
    for i in range(max(len(batches) for batches in per_copy)):
      stacked = [batches[i] if i < len(batches) else blank for batches in per_copy]
      yield {k: np.stack([b[k] for b in stacked]) for k in stacked[0]}

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    if self.full_batch:
      yield from self.base.train_batches(start_step)
      return
    for batches in zip(*(copy.train_batches(start_step) for copy in self.copies)):
      yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _if_active(fn: Callable[..., Any], active: jax.Array | None, state: TrainState, batch: Batch,
               keep: Any = None) -> Any:
  """fn(state, batch) where `active` (None: always); else NaN metrics, and `keep` in front of them if given
  (a step's state). Alone (lax.map) an inactive replica computes nothing; vmapped, both branches run."""
  if active is None:
    return fn(state, batch)
  shapes = jax.eval_shape(fn, state, batch)
  nan = lambda m: jnp.full(m.shape, jnp.nan if jnp.issubdtype(m.dtype, jnp.floating) else 0, m.dtype)
  skipped = (keep, jax.tree.map(nan, shapes[1])) if keep is not None else jax.tree.map(nan, shapes)
  return jax.lax.cond(active, lambda: fn(state, batch), lambda: skipped)


@dataclasses.dataclass(frozen=True)
class ReplicatedTask:
  """A task whose state has a leading replica axis; every function is the base one over the replicas (`_each`)."""

  base: Task
  num_replicas: int
  shared_batches: bool = False  # every replica trains on the same batch (a full-batch source)
  group: int = 0  # replicas computed together under vmap, groups one after another; 0: all together

  def _each(self, fn: Callable[..., Any], state: TrainState, batch: Batch, active: jax.Array | None,
            shared_batch: bool) -> Any:
    """fn(replica's state, its batch, its active flag or None) for every replica, stacked; in groups of `group`."""
    def one(xs):
      s, own_batch, on = xs
      return fn(s, batch if shared_batch else own_batch, on)

    stacked = (state, None if shared_batch else batch, active)
    if not self.group or self.group >= self.num_replicas:
      return jax.vmap(lambda *xs: one(xs))(*stacked)
    return jax.lax.map(one, stacked, batch_size=self.group if self.group > 1 else None)

  def init(self, rngs: jax.Array, batch: Batch) -> TrainState:
    # One replica after another, not vmapped: batched LAPACK kernels of jaxlib 0.10 on CPU (the QR of
    # orthogonal initialisers) wait for work queued on the thread pool they run on, and two at once hung a
    # 64-seed PPO init on the 2-core machine (seen 2026-12-06; jaxlib 0.11.2 removes that parallel path).
    return jax.lax.map(lambda rng: self.base.init(rng, batch), rngs)

  def train_step(self, state: TrainState, batch: Batch,
                 active: jax.Array | None = None) -> tuple[TrainState, Metrics]:
    """One step of every replica; `active` (one bool each, None: all): a replica that is not keeps its
    state and reports NaN metrics."""
    return self._each(lambda s, b, on: _if_active(self.base.train_step, on, s, b, keep=s), state, batch, active,
                      self.shared_batches)

  def eval_step(self, state: TrainState, batch: Batch, active: jax.Array | None = None) -> Metrics:
    """A batch with a replica axis (ReplicatedSource.per_replica_splits) gives each replica its own rows;
    a replica that is not `active` reports NaN sums."""
    return self._each(lambda s, b, on: _if_active(self.base.eval_step, on, s, b), state, batch, active,
                      np.ndim(batch['mask']) < 2)

  def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base task's rule; it works elementwise, so the replica axis is kept."""
    return getattr(self.base, 'summarize', metrics.summarize)(sums)

  @property
  def curve_metrics(self) -> tuple[str, ...]:
    return getattr(self.base, 'curve_metrics', ())

  @property
  def items_per_step(self) -> dict[str, int]:
    """Of all replicas together: a step of the vmapped program processes every replica's."""
    return {unit: count * self.num_replicas for unit, count in getattr(self.base, 'items_per_step', {}).items()}
