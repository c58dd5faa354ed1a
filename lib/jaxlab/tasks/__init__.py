"""Learning setups, chosen by `config.task`: a built-in name or 'package.module:make' of one's own."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

import ml_collections
import numpy as np

from jaxlab import config as config_lib
from jaxlab import models, optim
from jaxlab.errors import ConfigError
from jaxlab.tasks import attacks, frechet
from jaxlab.tasks.autoencoder import LOSSES, VAE, Autoencoder
from jaxlab.tasks.base import Task
from jaxlab.tasks.classification import Classification
from jaxlab.tasks.distillation import Distillation
from jaxlab.tasks.dqn import DQN, DQNSettings
from jaxlab.tasks.gan import GAN, FrechetReference
from jaxlab.tasks.language_model import LanguageModel, Samples
from jaxlab.tasks.masked_lm import MaskedLM
from jaxlab.tasks.node_classification import NodeClassification
from jaxlab.tasks.ppo import PPO, PPOSettings


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """What a task built on another run takes from it: its config, classes and variables (replica 0's, numpy)."""

  config: ml_collections.ConfigDict
  num_classes: int
  variables: Any


ReadRun = Callable[[str, str], FinishedRun]  # (workdir, what it is read as, for errors) -> its newest checkpoint's


def _cannot_read_runs(workdir: str, what: str) -> FinishedRun:
  raise ConfigError(f'{what} {workdir}: this task reads a finished run; build it through jaxlab.run.program.build')


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


def distillation(config: ml_collections.ConfigDict, source: Any, read_run: ReadRun) -> Distillation:
  """A classifier (config.model) learning the soft targets of the finished classification run `distill.teacher`."""
  config_lib.require('distill' in config, 'task distillation needs a distill block (teacher, temperature, hard_weight)')
  d = config.distill
  config_lib.require(bool(d.teacher), 'distill.teacher is empty; give the workdir of a finished classification run')
  config_lib.require(d.temperature > 0, f'distill.temperature must be positive, got {d.temperature}')
  config_lib.require(d.hard_weight >= 0, f'distill.hard_weight must be >= 0, got {d.hard_weight}')
  teacher_task = config_lib.read_run(d.teacher).task
  config_lib.require(teacher_task == 'classification',
                     f'distill.teacher {d.teacher} holds a {teacher_task!r} run, not a classification run')
  teacher = read_run(d.teacher, 'distill.teacher')
  config_lib.require(teacher.num_classes == source.num_classes,
                     f'distill.teacher {d.teacher} has {teacher.num_classes} classes, this data {source.num_classes}')
  model = models.create(teacher.config.model, source.num_classes)
  return Distillation(classification(config, source), model, teacher.variables, d.temperature, d.hard_weight)


SHOWN_IMAGES = 32  # test images shown above their reconstructions at each evaluation


def _block(config: ml_collections.ConfigDict, name: str, **defaults: Any) -> dict[str, Any]:
  """The config block `name` over its defaults; a key the task does not read is an error."""
  given = dict(config[name]) if name in config else {}
  unknown = sorted(set(given) - set(defaults))
  config_lib.require(not unknown, f'{name} has no key(s) {unknown}; it takes {sorted(defaults)}')
  return {**defaults, **given}


def _image_shape(config: ml_collections.ConfigDict, source: Any) -> tuple[int, int, int]:
  shape = tuple(source.example_batch()['x'].shape[1:])
  config_lib.require(len(shape) == 3, f'task {config.task} needs images (height, width, channels); data '
                                      f'{config.data.name!r} gives examples of shape {shape}')
  return shape


def _reference_split(source: Any) -> str:
  return 'test' if 'test' in source.eval_splits else source.eval_splits[0]


def _split_pixels(source: Any, split: str, pixels: attacks.PixelSpace) -> np.ndarray:
  """Every image of `split` (this host's share), as pixels in [0, 1]."""
  return np.concatenate([np.asarray(pixels.to_pixels(b['x']))[b['mask'] > 0] for b in source.eval_batches(split)])


def _autoencoding(config: ml_collections.ConfigDict, source: Any, variational: bool) -> dict[str, Any]:
  """What an autoencoder and a VAE are built from: model, optimizer, pixel space, the images shown."""
  model = models.create(config.model, 0, image_shape=_image_shape(config, source), variational=variational)
  config_lib.require(hasattr(model, 'encode') and hasattr(model, 'decode'),
                     f'task {config.task} needs a model with encode and decode (model.name autoencoder), not '
                     f'{config.model.name!r}')
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  shown = next(iter(source.eval_batches(_reference_split(source))))['x'][:SHOWN_IMAGES]
  return dict(model=model, tx=tx, pixel_space=attacks.pixel_space(config.data), shown=np.asarray(shown))


def _loss_name(loss: str) -> str:
  config_lib.require(loss in LOSSES, f'unknown reconstruction loss {loss!r}; choose from {", ".join(LOSSES)}')
  return loss


def autoencoder(config: ml_collections.ConfigDict, source: Any) -> Autoencoder:
  """Reconstruction through a code (config.autoencoder: loss mse|bernoulli, denoise noise std)."""
  block = _block(config, 'autoencoder', loss='mse', denoise=0.0)
  config_lib.require(block['denoise'] >= 0, f'autoencoder.denoise must be >= 0, got {block["denoise"]}')
  return Autoencoder(**_autoencoding(config, source, False), loss=_loss_name(block['loss']), denoise=block['denoise'])


def vae(config: ml_collections.ConfigDict, source: Any) -> VAE:
  """A variational autoencoder (config.vae: loss bernoulli|mse, beta, iwae_samples for the test bound)."""
  block = _block(config, 'vae', loss='bernoulli', beta=1.0, iwae_samples=0)
  config_lib.require(block['beta'] >= 0, f'vae.beta must be >= 0, got {block["beta"]}')
  config_lib.require(block['iwae_samples'] >= 0, f'vae.iwae_samples must be >= 0 (0: none), got {block["iwae_samples"]}')
  return VAE(**_autoencoding(config, source, True), loss=_loss_name(block['loss']), beta=block['beta'],
             iwae_samples=block['iwae_samples'])


def gan(config: ml_collections.ConfigDict, source: Any, read_run: ReadRun) -> GAN:
  """A GAN (model dcgan): config.optimizer trains the generator, config.discriminator_optimizer the discriminator;
  config.gan: discriminator_steps per generator step, frechet_run (a classification workdir, '' for none)."""
  block = _block(config, 'gan', discriminator_steps=1, frechet_run='')
  steps = block['discriminator_steps']
  config_lib.require(steps >= 1, f'gan.discriminator_steps must be >= 1, got {steps}')
  config_lib.require(config.data.batch_size % steps == 0, f'data.batch_size {config.data.batch_size} does not split '
                                                          f'into gan.discriminator_steps {steps} equal parts')
  config_lib.require('discriminator_optimizer' in config, 'task gan needs a discriminator_optimizer block (the keys '
                                                          'of optimizer)')
  model = models.create(config.model, 0, image_shape=_image_shape(config, source))
  config_lib.require(hasattr(model, 'generate') and hasattr(model, 'discriminate'),
                     f'task gan needs a model with generate and discriminate (model.name dcgan), not '
                     f'{config.model.name!r}')
  generator_tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  discriminator_tx, _ = optim.make_optimizer(config.discriminator_optimizer, config.train.num_steps)
  pixels, reference = attacks.pixel_space(config.data), None
  if block['frechet_run']:
    reference = FrechetReference(frechet.load(block['frechet_run'], read_run), lambda: _split_pixels(source, 'train', pixels))
  return GAN(model, generator_tx, discriminator_tx, pixels, steps, reference)


def _settings(config: ml_collections.ConfigDict, name: str, cls: type, counts: tuple[str, ...]) -> Any:
  """The dataclass `cls` from config block `name`; each key of `counts` must be >= 1."""
  settings = cls(**_block(config, name, **dataclasses.asdict(cls())))
  for key in counts:
    config_lib.require(getattr(settings, key) >= 1, f'{name}.{key} must be >= 1, got {getattr(settings, key)}')
  return settings


def _environments(config: ml_collections.ConfigDict, num_envs: int) -> Any:
  from jaxlab.data.environments import Environments
  config_lib.require('env' in config, f'task {config.task} needs an env block (env.name, a gymnax environment)')
  return Environments(config.env.name, num_envs)


def ppo(config: ml_collections.ConfigDict, source: Any) -> PPO:
  """PPO on the gymnax environment `env.name` (data.name episodes); config.ppo holds PPOSettings' keys."""
  settings = _settings(config, 'ppo', PPOSettings, ('num_envs', 'num_steps', 'epochs', 'minibatches'))
  transitions = settings.num_envs * settings.num_steps
  config_lib.require(transitions % settings.minibatches == 0, f'ppo.num_envs x ppo.num_steps = {transitions} '
                                                               f'transitions do not split into {settings.minibatches} minibatches')
  envs = _environments(config, settings.num_envs)
  model = models.create(config.model, 0, num_actions=envs.num_actions)
  updates = config.train.num_steps * settings.epochs * settings.minibatches  # the learning rate anneals over these
  tx, _ = optim.make_optimizer(config.optimizer, updates)
  return PPO(model, tx, envs, settings)


def dqn(config: ml_collections.ConfigDict, source: Any) -> DQN:
  """DQN on the gymnax environment `env.name` (data.name episodes); config.dqn holds DQNSettings' keys."""
  settings = _settings(config, 'dqn', DQNSettings, ('num_envs', 'buffer_size', 'batch_size', 'train_every',
                                                    'target_every', 'updates_per_step'))
  config_lib.require(0 <= settings.exploration_fraction <= 1,
                     f'dqn.exploration_fraction must be in [0, 1], got {settings.exploration_fraction}')
  config_lib.require(settings.loss in ('mse', 'huber'), f"dqn.loss must be 'mse' or 'huber', got {settings.loss!r}")
  envs = _environments(config, settings.num_envs)
  model = models.create(config.model, 0, num_actions=envs.num_actions)
  updates = config.train.num_steps * settings.updates_per_step
  tx, _ = optim.make_optimizer(config.optimizer, updates)
  total = config.train.num_steps * settings.updates_per_step * settings.train_every * settings.num_envs
  return DQN(model, tx, envs, total, settings)


# name -> make(config, source) -> Task. A task of one's own is any such function, named by import path.
TASKS: dict[str, Callable[[ml_collections.ConfigDict, Any], Task]] = {
    'classification': classification, 'language_model': language_model, 'masked_lm': masked_lm,
    'node_classification': node_classification, 'distillation': distillation, 'autoencoder': autoencoder,
    'vae': vae, 'gan': gan, 'ppo': ppo, 'dqn': dqn}


def check(config: ml_collections.ConfigDict) -> None:
  """What can be checked of the task before any data is read: its name and loss.penalty_paths."""
  config_lib.resolve('task', config.task, TASKS)
  _penalty_paths(config)


def make(config: ml_collections.ConfigDict, source: Any, read_run: ReadRun | None = None) -> Task:
  """The task `config.task` builds for this data source.

  A builder with a `read_run` parameter (distillation, gan) reads the finished runs it builds on through
  `read_run`, which the run supplies: reading a run's checkpoint is the run's business, not a task's.
  """
  build = config_lib.resolve('task', config.task, TASKS)
  if 'read_run' in inspect.signature(build).parameters:
    return build(config, source, read_run=read_run or _cannot_read_runs)
  return build(config, source)
