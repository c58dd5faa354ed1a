"""Learning setups, chosen by `config.task`: a built-in name or 'package.module:make' of one's own."""

from __future__ import annotations

import re
from typing import Any, Callable

import ml_collections

from jaxlab import attacks, imports, models, optim
from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.tasks.base import Task
from jaxlab.tasks.classification import Classification
from jaxlab.tasks.distillation import Distillation
from jaxlab.tasks.language_model import LanguageModel, Samples
from jaxlab.tasks.masked_lm import MaskedLM
from jaxlab.tasks.node_classification import NodeClassification


def _penalty_paths(config: ml_collections.ConfigDict) -> str:
  try:
    re.compile(config.loss.penalty_paths)
  except re.error as e:
    raise ConfigError(f'loss.penalty_paths {config.loss.penalty_paths!r} is not a regular expression: {e}') from None
  return config.loss.penalty_paths


def classification(config: ml_collections.ConfigDict, source: Any) -> Classification:
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  model = models.create(config.model, source.num_classes)
  loss = config.loss
  adversarial, weight = attacks.training_attack(loss)
  return Classification(model, tx, source.num_classes, loss.label_smoothing, loss.l1, loss.l2, _penalty_paths(config),
                        attacks.from_config(config), attacks.pixel_space(config.data), adversarial, weight)


def node_classification(config: ml_collections.ConfigDict, source: Any) -> NodeClassification:
  """Full-batch classification of a graph's nodes (a graph source, data.name='planetoid')."""
  config_lib.require(getattr(source, 'num_features', None) is not None,
                     f'task node_classification needs a graph data source (data.name planetoid), not {config.data.name!r}')
  config_lib.require(not (config.loss.l1 or config.loss.label_smoothing),
                     'task node_classification takes loss.l2 only (no l1, no label smoothing)')
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  model = models.create(config.model, source.num_classes, num_features=source.num_features)
  return NodeClassification(model, tx, source.num_classes, config.loss.l2, _penalty_paths(config))


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
  config_lib.require(samples.num_samples >= 0, f'sample.num_samples must be >= 0 (0: none), got {samples.num_samples}')
  return LanguageModel(_sequence_model(config, source.num_classes), tx, source.vocab,
                       config.data.batch_size * config.data.block_size, config.data.block_size, samples)


def masked_lm(config: ml_collections.ConfigDict, source: Any) -> MaskedLM:
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  return MaskedLM(_sequence_model(config, source.num_classes + 1), tx, source.num_classes,
                  config.data.batch_size * config.data.block_size, config.data.block_size)


def distillation(config: ml_collections.ConfigDict, source: Any) -> Distillation:
  """A classifier (config.model) learning the soft targets of the finished classification run `distill.teacher`."""
  from jaxlab import init_from_run  # it reads runs through train, which imports this package
  config_lib.require('distill' in config, 'task distillation needs a distill block (teacher, temperature, hard_weight)')
  d = config.distill
  config_lib.require(bool(d.teacher), 'distill.teacher is empty; give the workdir of a finished classification run')
  config_lib.require(d.temperature > 0, f'distill.temperature must be positive, got {d.temperature}')
  config_lib.require(d.hard_weight >= 0, f'distill.hard_weight must be >= 0, got {d.hard_weight}')
  teacher_task = config_lib.read_run(d.teacher).task
  config_lib.require(teacher_task == 'classification',
                     f'distill.teacher {d.teacher} holds a {teacher_task!r} run, not a classification run')
  _, teacher_config, teacher_source, state = init_from_run.restore_run(d.teacher, what='distill.teacher')
  config_lib.require(teacher_source.num_classes == source.num_classes,
                     f'distill.teacher {d.teacher} has {teacher_source.num_classes} classes, this data '
                     f'{source.num_classes}')
  variables = init_from_run.first_replica(teacher_config, {'params': state.params, **state.model_state})
  teacher = models.create(teacher_config.model, source.num_classes)
  return Distillation(classification(config, source), teacher, variables, d.temperature, d.hard_weight)


# name -> make(config, source) -> Task. A task of one's own is any such function, named by import path.
TASKS: dict[str, Callable[[ml_collections.ConfigDict, Any], Task]] = {
    'classification': classification, 'language_model': language_model, 'masked_lm': masked_lm,
    'node_classification': node_classification, 'distillation': distillation}


def make(config: ml_collections.ConfigDict, source: Any) -> Task:
  """The task `config.task` builds for this data source."""
  return imports.resolve('task', config.task, TASKS)(config, source)
