"""Multi-layer perceptron; with no hidden layers it is logistic regression."""

from typing import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int] = (100, 100)
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
