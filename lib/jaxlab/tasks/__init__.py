"""Learning setups, chosen by `config.task`: a built-in name or 'package.module:make' of one's own."""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

from jaxlab import imports, models, optim
from jaxlab.tasks.base import Task
from jaxlab.tasks.classification import Classification


def classification(config: ml_collections.ConfigDict, source: Any) -> Classification:
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  model = models.create(config.model, source.num_classes)
  loss = config.loss
  return Classification(model, tx, source.num_classes, loss.label_smoothing, loss.l1, loss.l2)


# name -> make(config, source) -> Task. A task of one's own is any such function, named by import path.
TASKS: dict[str, Callable[[ml_collections.ConfigDict, Any], Task]] = {'classification': classification}


def make(config: ml_collections.ConfigDict, source: Any) -> Task:
  """The task `config.task` builds for this data source."""
  return imports.resolve('task', config.task, TASKS)(config, source)
