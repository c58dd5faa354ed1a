"""Learning setups, chosen by `config.task`."""

from __future__ import annotations

import ml_collections

from jaxlab import models, optim
from jaxlab.data.arrays import ArraySource
from jaxlab.errors import ConfigError
from jaxlab.tasks.base import Task
from jaxlab.tasks.classification import Classification

TASKS = ('classification',)


def make(config: ml_collections.ConfigDict, source: ArraySource) -> tuple[Task, 'optim.optax.Schedule']:
  """The task for `config.task` and the learning-rate schedule it trains with."""
  tx, schedule = optim.make_optimizer(config.optimizer, config.train.num_steps)
  if config.task == 'classification':
    model = models.create(config.model, source.num_classes)
    loss = config.loss
    return Classification(model, tx, source.num_classes, loss.label_smoothing, loss.l1, loss.l2), schedule
  raise ConfigError(f'unknown task {config.task!r}; choose from {", ".join(TASKS)}')
