"""Networks of reinforcement learning agents, MLPs over the flattened observation: an actor-critic for PPO
(orthogonal initialisation, as CleanRL's and PureJaxRL's PPO), a Q-network for DQN (Flax's default
initialisation, as CleanRL's JAX DQN)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.models import checks

ACTIVATIONS = {'tanh': nn.tanh, 'relu': nn.relu}


def _dense(features: int, scale: float) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


class _Torso(nn.Module):
  hidden: Sequence[int]
  activation: str
  orthogonal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    for width in self.hidden:
      layer = _dense(width, np.sqrt(2)) if self.orthogonal else nn.Dense(width)
      x = ACTIVATIONS[self.activation](layer(x))
    return x


class ActorCritic(nn.Module):
  """Separate policy and value MLPs: observation -> (action logits, state value)."""

  num_actions: int
  hidden: Sequence[int] = (64, 64)
  activation: str = 'tanh'

  def validate(self) -> None:
    checks.positive(hidden=tuple(self.hidden) or (1,))
    checks.one_of('activation', self.activation, ACTIVATIONS)

  @nn.compact
  def __call__(self, obs: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    logits = _dense(self.num_actions, 0.01)(_Torso(self.hidden, self.activation, name='actor')(obs))
    value = _dense(1, 1.0)(_Torso(self.hidden, self.activation, name='critic')(obs))
    return logits, value[:, 0]


class QNetwork(nn.Module):
  """observation -> one value per action."""

  num_actions: int
  hidden: Sequence[int] = (120, 84)
  activation: str = 'relu'

  def validate(self) -> None:
    checks.positive(hidden=tuple(self.hidden) or (1,))
    checks.one_of('activation', self.activation, ACTIVATIONS)

  @nn.compact
  def __call__(self, obs: jax.Array, train: bool = False) -> jax.Array:
    return nn.Dense(self.num_actions)(_Torso(self.hidden, self.activation, orthogonal=False)(obs))
