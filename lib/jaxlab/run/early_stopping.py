"""Early stopping on a validation metric, keeping the best state (in device memory, and in <workdir>/best
with every checkpoint); per replica for vmapped seeds.

Config (the `train` block of config.defaults()): `early_stopping_metric` such as
'validation_accuracy' (empty: off), `early_stopping_mode` 'max' or 'min', and
`early_stopping_patience`: stop after this many evaluations without improvement (0: never stop,
only keep the best). The patience count is derived from (step, best step), so it survives resume.

The best state is one more copy of the state on the devices; it is written to <workdir>/best just
before each regular checkpoint (saving it at every improvement cost ~0.1 s per evaluation, which
dominated runs that evaluate every epoch). A run resumed from checkpoint s finds the best of step
s or later, and replays the same evaluations, so it ends with the same best state.

With `num_replicas` > 1 every replica has its own best step, best value and patience, as a
separate run with its seed would; a replica whose patience has run out is `inactive` (the loop
stops updating it) and the run ends when all are.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from jaxlab.errors import ConfigError
from jaxlab.run import checkpoint

BEST_DIR = 'best'


@jax.jit
def select(take: jax.Array, new: Any, old: Any) -> Any:
  """Per replica: `new` where `take`, else `old` (leaves with a leading replica axis; `take` a scalar: one run)."""
  pick = lambda a, b: jnp.where(take if take.ndim == 0 else take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return jax.tree.map(pick, new, old)


def _like(x: jax.Array) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))


class BestCheckpoint:
  """Saves the best state whenever the watched metric improves; says which replicas' patience has run out."""

  def __init__(self, workdir: str, metric: str, mode: str, patience: int, eval_every: int, num_replicas: int = 1):
    split, _, self.key = metric.partition('_')
    if split != 'validation' or not self.key:
      raise ConfigError(f'train.early_stopping_metric must name a validation metric such as '
                        f"'validation_accuracy' (never the test set), got {metric!r}")
    if mode not in ('max', 'min'):
      raise ConfigError(f"train.early_stopping_mode must be 'max' or 'min', got {mode!r}")
    if patience > 0 and eval_every <= 0:
      raise ConfigError('train.early_stopping_patience needs train.eval_every > 0')
    self.metric, self.mode, self.patience, self.eval_every = metric, mode, patience, eval_every
    self.per_replica = num_replicas > 1
    self.steps = np.full(num_replicas, -1)  # -1: no evaluation yet
    self.values = np.full(num_replicas, np.nan)
    self._states = None  # the best state (of each replica), on the devices; None: only on disk
    self._unsaved = False
    self.directory = str(epath.Path(workdir) / BEST_DIR)
    self._ckpt = checkpoint.Checkpointer(self.directory, keep=1)
    self._saved, self._meta = self._ckpt.latest_step(), {}
    if self._saved is not None:
      try:
        _, self._meta = self._ckpt.read_meta(self._saved)
        self.steps = np.array(self._meta.get('best_steps', [self._saved]))
        self.values = np.array(self._meta.get('best_values', [self._meta.get('best_value')]), np.float64)
      except checkpoint.CorruptCheckpointError as e:
        print(f'warning: {e}; moved it aside to {self._ckpt.move_aside(self._saved)}; the best so far is forgotten',
              file=sys.stderr, flush=True)
        self._saved = None
    if len(self.steps) != num_replicas:
      raise ConfigError(f'{self.directory} holds the best states of {len(self.steps)} replica(s), not {num_replicas}')

  @property
  def step(self) -> int | None:
    """The best step of a single run (None before the first evaluation)."""
    return None if self.steps[0] < 0 else int(self.steps[0])

  @property
  def value(self) -> float | None:
    return None if self.steps[0] < 0 or np.isnan(self.values[0]) else float(self.values[0])

  def _better(self, values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid='ignore'):
      better = values > self.values if self.mode == 'max' else values < self.values
    return (self.steps < 0) | better

  def update(self, step: int, results: dict[str, dict[str, Any]], state: Any) -> np.ndarray:
    """Keeps the state of every active replica whose evaluation is strictly better than its best
    so far; returns which did (one bool per replica)."""
    validation = results['validation']
    if self.key not in validation:
      raise ConfigError(f'train.early_stopping_metric {self.metric!r} is not among the validation metrics: '
                        f'{", ".join("validation_" + k for k in sorted(validation) if not k.endswith("_replicas"))}')
    values = np.asarray(validation[f'{self.key}_replicas'] if self.per_replica else [validation[self.key]], np.float64)
    # A replica stopped at an earlier evaluation is frozen; this one may still improve at its last.
    improved = self._better(values) & self.active(step - self.eval_every)
    if not improved.any():
      return improved
    # A new array either way: the loop donates `state` to its next step.
    if self._states is None and self._saved is not None:  # resumed: the best so far is on disk
      self._states = self.restore(jax.tree.map(_like, state))
    kept = state if self._states is None else self._states
    self._states = select(jnp.asarray(improved if self.per_replica else improved[0]), state, kept)
    self.steps, self.values = np.where(improved, step, self.steps), np.where(improved, values, self.values)
    self._unsaved = True
    return improved

  def save(self, step: int, config: dict[str, Any]) -> None:
    """Writes the best state to <workdir>/best if it changed; the loop calls it before each checkpoint."""
    if not self._unsaved:
      return
    # The values travel inside the same save as the states: no separate record can go stale.
    self._meta = self._ckpt.save(step, self._states, config, best_steps=self.steps.tolist(),
                                 best_values=self.values.tolist())
    self._ckpt.wait()
    self._saved, self._unsaved = step, False

  def active(self, step: int) -> np.ndarray:
    """Per replica: whether it still trains (its patience has not run out)."""
    if self.patience <= 0:
      return np.ones(len(self.steps), bool)
    return (self.steps < 0) | ((step - self.steps) // self.eval_every < self.patience)

  def should_stop(self, step: int) -> bool:
    """True once every replica has gone `patience` evaluations without improving on its best."""
    return not self.active(step).any()

  def restore(self, target: Any) -> Any:
    """The best state (of every replica), from the devices or from <workdir>/best."""
    if self._states is not None:
      return self._states
    return self._ckpt.restore(self._saved, target, self._meta)

  def summary(self, stopped_early: bool) -> dict[str, Any]:
    """Best step and value (per replica: as lists, the value also as their mean) and whether it stopped early."""
    if not self.per_replica:
      return {'best_step': self.step, f'best_{self.metric}': self.value, 'stopped_early': stopped_early}
    return {'best_step_replicas': self.steps.tolist(), f'best_{self.metric}': float(np.mean(self.values)),
            f'best_{self.metric}_replicas': self.values.tolist(), 'stopped_early': stopped_early}

  def close(self) -> None:
    self._ckpt.close()


def from_config(workdir: str, config: ml_collections.ConfigDict) -> BestCheckpoint | None:
  """The tracker the `train` block asks for, or None when early stopping is off."""
  t = config.train
  if not t.early_stopping_metric:
    return None
  return BestCheckpoint(workdir, t.early_stopping_metric, t.early_stopping_mode, t.early_stopping_patience,
                        t.eval_every, config.num_replicas)
