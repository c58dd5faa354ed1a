"""Flax Linen model families, created by name from the `model` config block."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import ml_collections

from jaxlab.errors import ConfigError
from jaxlab.models.cnn import CNN1D
from jaxlab.models.convnets import ACTIVATIONS, CNN, LeNet5
from jaxlab.models.mlp import MLP
from jaxlab.models.resnet import ResNet, stage_sizes
from jaxlab.models.rnn import CELLS, READOUTS, RNNClassifier

MODELS: dict[str, type[nn.Module]] = {'mlp': MLP, 'cnn1d': CNN1D, 'rnn': RNNClassifier, 'lenet5': LeNet5, 'cnn': CNN,
                                      'resnet': ResNet}


def create(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The module `cfg.name` built with the block's other keys as its attributes."""
  kwargs = dict(cfg)
  name = kwargs.pop('name')
  if name not in MODELS:
    raise ConfigError(f'unknown model.name {name!r}; choose from {", ".join(sorted(MODELS))}')
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls) if f.init} - {'parent', 'name', 'num_classes'}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ConfigError(f'model {name!r} has no attribute(s) {unknown}; it takes {sorted(fields)}')
  if name == 'rnn' and kwargs.get('cell', 'gru') not in CELLS:
    raise ConfigError(f'unknown model.cell {kwargs["cell"]!r}; choose from {", ".join(CELLS)}')
  if name == 'rnn' and kwargs.get('readout', 'flatten') not in READOUTS:
    raise ConfigError(f'unknown model.readout {kwargs["readout"]!r}; choose from {", ".join(READOUTS)}')
  if name == 'lenet5' and kwargs.get('activation', 'tanh') not in ACTIVATIONS:
    raise ConfigError(f'unknown model.activation {kwargs["activation"]!r}; choose from {", ".join(ACTIVATIONS)}')
  if name == 'resnet':
    try:
      stage_sizes(kwargs.get('style', 'cifar'), kwargs.get('depth', 20))
    except ValueError as e:
      raise ConfigError(f'model: {e}') from None
  return cls(num_classes=num_classes, **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
