"""LeNet-5 and the plain conv-pool CNN for NHWC images in plain jax.numpy.

Convolutions with jax.lax.conv_general_dilated, average or max pooling with jax.lax.reduce_window,
dense layers as matmuls, inverted dropout; softmax cross-entropy with optional label smoothing and
an L1/L2 penalty on the kernels that the config's loss.penalty_paths names. Parameters are a dict of
arrays; `from_jaxlab` renames jaxlab's LeNet5 or CNN parameters into it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.errors import ConfigError
from jaxlab.evaluators.references import Case, common
from jaxlab.evaluators.references.layers import dense, dropout, penalised, penalty

WINDOW = (1, 2, 2, 1)  # both models pool 2x2 with stride 2


@dataclasses.dataclass
class Spec:
  """The model and loss of one config, as the reference reads them."""

  lenet: bool  # LeNet-5: VALID convolutions (a 28x28 input padded to 32x32), average pooling; else SAME, max
  activation: str  # 'tanh' or 'relu'
  dropout: float
  label_smoothing: float
  l1: float
  l2: float
  penalised: Any  # `penalised` in the reference's layout: the kernels the penalty covers


def conv(x: jax.Array, p: dict[str, jax.Array], padding: Any) -> jax.Array:
  return jax.lax.conv_general_dilated(x, p['w'], (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p['b']


def logits(p: dict[str, Any], x: jax.Array, spec: Spec, key: jax.Array | None = None) -> jax.Array:
  keys = list(jax.random.split(key, len(p['dense']) + 1)) if key is not None else [None] * (len(p['dense']) + 1)
  act = jnp.tanh if spec.activation == 'tanh' else jax.nn.relu
  for i, layer in enumerate(p['convs']):
    if spec.lenet:
      pad = 2 if i == 0 and x.shape[1] == 28 else 0  # LeCun's input field is 32x32
      x = act(conv(x, layer, ((pad, pad), (pad, pad))))
      x = jax.lax.reduce_window(x, 0.0, jax.lax.add, WINDOW, WINDOW, 'VALID') / 4
    else:
      x = jax.lax.reduce_window(act(conv(x, layer, 'SAME')), -jnp.inf, jax.lax.max, WINDOW, WINDOW, 'VALID')
  x = x.reshape(x.shape[0], -1)
  if not spec.lenet:  # the plain CNN drops its convolutional features too, LeNet-5 only its hidden units
    x = dropout(x, spec.dropout, keys.pop())
  for layer in p['dense']:
    x = dropout(act(dense(x, layer)), spec.dropout, keys.pop())
  return dense(x, p['head'])


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def loss(p: dict[str, Any], batch: dict[str, jax.Array], spec: Spec, key: jax.Array | None = None) -> jax.Array:
  return (cross_entropy(logits(p, batch['x'], spec, key), batch['y'], spec.label_smoothing)
          + penalty(p, spec.penalised, spec.l1, spec.l2))


def _numbered(params: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
  names = sorted((k for k in params if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
  return [{'w': params[k]['kernel'], 'b': params[k]['bias']} for k in names]


def from_jaxlab(params: dict[str, Any]) -> dict[str, Any]:
  """jaxlab's LeNet5 or CNN parameters (models/convnets.py names) in the reference's layout."""
  return {'convs': _numbered(params, 'Conv_'), 'dense': _numbered(params, 'Dense_'),
          'head': {'w': params['head']['kernel'], 'b': params['head']['bias']}}


def case(config: ml_collections.ConfigDict, program: Any = None) -> Case:
  m, objective = config.model, config.loss
  if m.get('batch_norm', False):
    raise ConfigError('bench --bench_against=reference: the cnn reference has no BatchNorm; '
                      'run it with --config.model.batch_norm=False')
  if objective.adversarial:
    raise ConfigError('bench --bench_against=reference: the cnn reference has no adversarial training; '
                      "run it with --config.loss.adversarial=''")
  setup = common.setup(config, program)
  model = setup.task.model  # the attributes jaxlab built it with, its defaults filled in
  lenet = m.name == 'lenet5'
  jaxlab_penalised = penalised(setup.params, objective.penalty_paths)
  spec = Spec(lenet=lenet, activation=model.activation if lenet else 'relu', dropout=model.dropout,
              label_smoothing=objective.label_smoothing, l1=objective.l1, l2=objective.l2,
              penalised=from_jaxlab(jaxlab_penalised))
  params = from_jaxlab(setup.params)
  check = setup.first_batch
  jaxlab_loss = (cross_entropy(model.apply({'params': setup.params}, check['x'], train=False), check['y'],
                               spec.label_smoothing)
                 + penalty(setup.params, jaxlab_penalised, spec.l1, spec.l2))
  return common.gradient_case(setup, params,
                             lambda p, batch, key: loss(p, batch, spec, key if spec.dropout else None),
                             jaxlab_loss, loss(params, check, spec), config.seed)
