"""Early stopping on a validation metric, keeping the best checkpoint in <workdir>/best.

Config (the `train` block of config.defaults()): `early_stopping_metric` such as
'validation_accuracy' (empty: off), `early_stopping_mode` 'max' or 'min', and
`early_stopping_patience`: stop after this many evaluations without improvement (0: never stop,
only keep the best). The patience count is derived from (step, best step), so it survives resume.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections
from etils import epath

from jaxlab import checkpoint
from jaxlab.errors import ConfigError

BEST_DIR = 'best'


class BestCheckpoint:
  """Saves the state whenever the watched metric improves; says when patience has run out."""

  def __init__(self, workdir: str, metric: str, mode: str, patience: int, eval_every: int):
    split, _, self.key = metric.partition('_')
    if split != 'validation' or not self.key:
      raise ConfigError(f'train.early_stopping_metric must name a validation metric such as '
                        f"'validation_accuracy' (never the test set), got {metric!r}")
    if mode not in ('max', 'min'):
      raise ConfigError(f"train.early_stopping_mode must be 'max' or 'min', got {mode!r}")
    if patience > 0 and eval_every <= 0:
      raise ConfigError('train.early_stopping_patience needs train.eval_every > 0')
    self.metric, self.mode, self.patience, self.eval_every = metric, mode, patience, eval_every
    self.directory = str(epath.Path(workdir) / BEST_DIR)
    self._ckpt = checkpoint.Checkpointer(self.directory, keep=1)
    self.step, self.value, self._meta = None, None, {}
    saved = self._ckpt.latest_step()
    if saved is not None:
      try:
        _, self._meta = self._ckpt.read_meta(saved)
        self.step, self.value = saved, self._meta.get('best_value')
      except checkpoint.CorruptCheckpointError as e:
        print(f'warning: {e}; moved it aside to {self._ckpt.move_aside(saved)}; the best so far is forgotten',
              file=sys.stderr, flush=True)

  def _better(self, value: float) -> bool:
    return self.value is None or (value > self.value if self.mode == 'max' else value < self.value)

  def update(self, step: int, results: dict[str, dict[str, float]], state: Any, config: dict[str, Any]) -> bool:
    """Saves `state` if this evaluation is strictly better than the best so far; returns whether it was."""
    if self.key not in results['validation']:
      raise ConfigError(f'train.early_stopping_metric {self.metric!r} is not among the validation metrics: '
                        f'{", ".join("validation_" + k for k in sorted(results["validation"]))}')
    value = results['validation'][self.key]
    if not self._better(value):
      return False
    # The value travels inside the same save as the state: no separate record can go stale.
    self._meta = self._ckpt.save(step, state, config, best_value=value, best_metric=self.metric)
    self._ckpt.wait()
    self.step, self.value = step, value
    return True

  def should_stop(self, step: int) -> bool:
    """True once `patience` evaluations have passed since the best one."""
    if self.patience <= 0 or self.step is None:
      return False
    return (step - self.step) // self.eval_every >= self.patience

  def restore(self, target: Any) -> Any:
    return self._ckpt.restore(self.step, target, self._meta)

  def close(self) -> None:
    self._ckpt.close()


def from_config(workdir: str, train_cfg: ml_collections.ConfigDict) -> BestCheckpoint | None:
  """The tracker the `train` block asks for, or None when early stopping is off."""
  metric = train_cfg.early_stopping_metric
  if not metric:
    return None
  return BestCheckpoint(workdir, metric, train_cfg.early_stopping_mode,
                        train_cfg.early_stopping_patience, train_cfg.eval_every)
