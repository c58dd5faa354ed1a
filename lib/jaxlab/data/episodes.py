"""The data source of reinforcement learning: the environment lives inside the task's jitted step, so a
training batch is empty and an evaluation batch names the evaluation episodes to play."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import numpy as np

from jaxlab.errors import ConfigError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class EpisodeSource:
  """`eval_episodes` evaluation episodes in one batch: 'index' picks each one's fixed start."""

  eval_episodes: int
  num_classes: int = 0
  full_batch: bool = True  # the same (empty) batch for every step, device and replica

  def __post_init__(self):
    if self.eval_episodes < 1:
      raise ConfigError(f'data.eval_episodes must be >= 1, got {self.eval_episodes}')

  @property
  def eval_splits(self) -> list[str]:
    return ['test']

  def example_batch(self) -> Batch:
    return {}

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    return itertools.repeat({})

  def eval_batches(self, split: str) -> Iterator[Batch]:
    yield {'index': np.arange(self.eval_episodes, dtype=np.int32), 'mask': np.ones(self.eval_episodes, np.float32)}


def data_config(eval_episodes: int = 10) -> dict:
  return dict(name='episodes', eval_episodes=eval_episodes, batch_size=1, eval_batch_size=1)
