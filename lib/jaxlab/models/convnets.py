"""2-D convolutional classifiers for NHWC images: LeNet-5 and a plain conv-pool CNN."""

from typing import Sequence

import flax.linen as nn
import jax

from jaxlab.models import checks

ACTIVATIONS = {'relu': nn.relu, 'tanh': nn.tanh}


class LeNet5(nn.Module):
  """LeCun et al. 1998: C1 6@5x5 (28x28 input padded to 32x32), S2, C3 16@5x5, S4, C5 120, F6 84.

  Subsampling is average pooling and C3 is fully connected to S2 (the common modern reading of
  the paper; its sparse C3 table and RBF output layer are left out).
  """

  num_classes: int
  activation: str = 'tanh'
  dropout: float = 0.0

  def validate(self) -> None:
    checks.one_of('activation', self.activation, ACTIVATIONS)
    checks.rate(dropout=self.dropout)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    pad = 2 if x.shape[1] == 28 else 0  # MNIST is 28x28; the paper's input field is 32x32
    x = act(nn.Conv(6, (5, 5), padding=[(pad, pad), (pad, pad)])(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = act(nn.Conv(16, (5, 5), padding='VALID')(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    for width in (120, 84):
      x = act(nn.Dense(width)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='head')(x)


class CNN(nn.Module):
  """[conv k x k -> ReLU (-> BatchNorm)] -> 2x2 max-pool per entry of `channels`, then dense layers."""

  num_classes: int
  channels: Sequence[int] = (32, 64)
  kernel_size: int = 3
  hidden: Sequence[int] = (128,)
  dropout: float = 0.0
  batch_norm: bool = False

  def validate(self) -> None:
    checks.positive(channels=self.channels, hidden=tuple(self.hidden) or (1,), kernel_size=self.kernel_size)
    checks.rate(dropout=self.dropout)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for width in self.channels:
      x = nn.relu(nn.Conv(width, (self.kernel_size, self.kernel_size))(x))
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.relu(nn.Dense(width)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name='head')(x)
