"""Learning setups, chosen by `config.task`: a built-in name or 'package.module:make' of one's own."""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

from jaxlab import imports, models, optim
from jaxlab import config as config_lib
from jaxlab.tasks.base import Task
from jaxlab.tasks.classification import Classification
from jaxlab.tasks.language_model import LanguageModel, Samples
from jaxlab.tasks.masked_lm import MaskedLM


def classification(config: ml_collections.ConfigDict, source: Any) -> Classification:
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  model = models.create(config.model, source.num_classes)
  loss = config.loss
  return Classification(model, tx, source.num_classes, loss.label_smoothing, loss.l1, loss.l2)


def _sequence_model(config: ml_collections.ConfigDict, vocab_size: int) -> Any:
  model = models.create(config.model, vocab_size)
  context = getattr(model, 'block_size', None)
  config_lib.require(context is None or config.data.block_size <= context,
                     f'data.block_size {config.data.block_size} exceeds the model.block_size of {context}')
  return model


def language_model(config: ml_collections.ConfigDict, source: Any) -> LanguageModel:
  """Next-token prediction on a text source; `config.sample` (if present) sets the samples of each evaluation."""
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  samples = Samples(**config.sample) if 'sample' in config else Samples()
  config_lib.require(bool(samples.prompt), 'sample.prompt is empty; give at least one character')
  return LanguageModel(_sequence_model(config, source.num_classes), tx, source.vocab,
                       config.data.batch_size * config.data.block_size, config.data.block_size, samples)


def masked_lm(config: ml_collections.ConfigDict, source: Any) -> MaskedLM:
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  return MaskedLM(_sequence_model(config, source.num_classes + 1), tx, source.num_classes,
                  config.data.batch_size * config.data.block_size, config.data.block_size)


# name -> make(config, source) -> Task. A task of one's own is any such function, named by import path.
TASKS: dict[str, Callable[[ml_collections.ConfigDict, Any], Task]] = {
    'classification': classification, 'language_model': language_model, 'masked_lm': masked_lm}


def make(config: ml_collections.ConfigDict, source: Any) -> Task:
  """The task `config.task` builds for this data source."""
  return imports.resolve('task', config.task, TASKS)(config, source)
