"""Flax Linen model families, created by name from the `model` config block."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.models.cnn import CNN1D
from jaxlab.models.convnets import CNN, LeNet5
from jaxlab.models.generative import DCGAN, Autoencoder
from jaxlab.models.graph import GAT, GCN
from jaxlab.models.mlp import MLP
from jaxlab.models.policies import ActorCritic, QNetwork
from jaxlab.models.resnet import ResNet
from jaxlab.models.rnn import RNNLM, RNNClassifier
from jaxlab.models.transformer import BERT, GPT, ViT

MODELS: dict[str, type[nn.Module]] = {'mlp': MLP, 'cnn1d': CNN1D, 'rnn': RNNClassifier, 'lenet5': LeNet5, 'cnn': CNN,
                                      'resnet': ResNet, 'vit': ViT, 'gpt': GPT, 'bert': BERT, 'rnn_lm': RNNLM,
                                      'gcn': GCN, 'gat': GAT, 'autoencoder': Autoencoder, 'dcgan': DCGAN,
                                      'actor_critic': ActorCritic, 'q_network': QNetwork}


COUNTS = ('num_classes', 'vocab_size', 'num_features', 'num_actions')  # sizes the data fixes, all counts


def create(cfg: ml_collections.ConfigDict, num_classes: int, **data_sizes: Any) -> nn.Module:
  """The module `cfg.name` (a built-in name or 'package.module:Class') with the block's other keys as attributes.

  `num_classes` is passed as the model's `vocab_size` where it has one (language models), else
  as `num_classes` where it has that; `data_sizes` (a graph's num_features, an image_shape, what the task
  fixes) to the models that have such fields.
  A model checks its own attributes in an optional `validate()` that raises ValueError.
  """
  cls, attributes = _resolve(cfg)
  fields = _fields(cls)
  size_field = 'vocab_size' if 'vocab_size' in fields else 'num_classes'
  sizes = {k: v for k, v in data_sizes.items() if k in fields}
  if size_field in fields:
    sizes[size_field] = num_classes
  _check_keys(cfg.name, attributes, fields - set(sizes))
  return _validated(cls(**sizes, **attributes), cfg.name)


def check(cfg: ml_collections.ConfigDict) -> None:
  """The `model` block checked before any data is read: its name and keys and, where the data fixes only
  counts (classes, features, actions), the model's own `validate()`, with 2 standing in for each count."""
  cls, attributes = _resolve(cfg)
  fields = _fields(cls)
  _check_keys(cfg.name, attributes, fields - {'vocab_size' if 'vocab_size' in fields else 'num_classes'})
  counts = {k: 2 for k in fields & set(COUNTS) if k not in attributes}
  required = {f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
              and f.default_factory is dataclasses.MISSING} - {'parent', 'name'}
  if required <= set(counts) | set(attributes):  # else the data fixes more (an image shape): create checks it
    _validated(cls(**counts, **attributes), cfg.name)


def _resolve(cfg: ml_collections.ConfigDict) -> tuple[type, dict[str, Any]]:
  """The model's class and the block's attributes (lists as tuples)."""
  kwargs = dict(cfg)
  name = kwargs.pop('name')
  cls = config_lib.resolve('model.name', name, MODELS)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ConfigError(f'model.name {name!r} is not a flax.linen Module class')
  return cls, {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _fields(cls: type) -> set[str]:
  return {f.name for f in dataclasses.fields(cls) if f.init} - {'parent', 'name'}


def _check_keys(name: str, attributes: dict[str, Any], allowed: set[str]) -> None:
  unknown = sorted(set(attributes) - allowed)
  if unknown:
    raise ConfigError(f'model {name!r} has no attribute(s) {unknown}; it takes {sorted(allowed)}')


def _validated(model: nn.Module, name: str) -> nn.Module:
  try:
    getattr(model, 'validate', lambda: None)()
  except ValueError as e:
    raise ConfigError(f'model {name!r}: {e}') from None
  return model
