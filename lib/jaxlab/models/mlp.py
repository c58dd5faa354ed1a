"""Multi-layer perceptron; with no hidden layers it is logistic regression."""

from typing import Sequence

import flax.linen as nn
import jax

from jaxlab.models import checks


class MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int] = (100, 100)
  dropout: float = 0.0  # after each hidden layer
  input_dropout: float = 0.0  # on the flattened inputs (Hinton et al. 2012 drop 20 % of the pixels)
  residual: bool = False  # x + layer(x) where a layer keeps the width (the MNIST-1D paper's MLP)

  def validate(self) -> None:
    checks.positive(hidden=tuple(self.hidden) or (1,))  # no hidden layer: logistic regression
    checks.rate(dropout=self.dropout, input_dropout=self.input_dropout)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    # Megatron's alternation for the sharding rules: column-parallel, then row-parallel, ...
    names = [('embed', 'mlp'), ('mlp', 'embed')]
    for i, width in enumerate(self.hidden):
      h = nn.relu(_dense(width, names[i % 2])(x))
      x = x + h if self.residual and x.shape[-1] == width else h
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return _dense(self.num_classes, (names[len(self.hidden) % 2][0], 'classes'), name='head')(x)


def _dense(features: int, names: tuple[str, str], name: str | None = None) -> nn.Dense:
  return nn.Dense(features, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
