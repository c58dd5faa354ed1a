"""Plain convolutional classifiers."""

from typing import Sequence

import flax.linen as nn
import jax


class CNN1D(nn.Module):
  """Strided 1-D convolutions over a (batch, length) or (batch, length, channels) signal."""

  num_classes: int
  channels: int = 25
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  padding: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 2:
      x = x[..., None]
    for kernel, stride in zip(self.kernel_sizes, self.strides):
      x = nn.relu(nn.Conv(self.channels, (kernel,), strides=(stride,), padding=[(self.padding, self.padding)])(x))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
