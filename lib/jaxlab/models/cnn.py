"""Plain convolutional classifiers."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models import checks


class MatmulConv1D(nn.Module):
  """A strided 1-D convolution as one matmul over gathered windows; same parameters as nn.Conv.

  XLA:CPU runs a convolution under vmap (many seeds in one step, replicas.py) as a grouped
  convolution, ~4x slower than the seeds one after another; as a matmul it batches well.
  """

  features: int
  kernel_size: int
  stride: int
  padding: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (self.kernel_size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
    length = (x.shape[1] - self.kernel_size) // self.stride + 1
    end = self.stride * (length - 1) + 1
    windows = jnp.stack([x[:, k:k + end:self.stride] for k in range(self.kernel_size)], axis=2)
    return jnp.einsum('blkc,kcf->blf', windows, kernel) + bias


class CNN1D(nn.Module):
  """Strided 1-D convolutions over a (batch, length) or (batch, length, channels) signal.

  `conv='matmul'` computes the same function with MatmulConv1D (identical parameter tree).
  """

  num_classes: int
  channels: int = 25
  kernel_sizes: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  padding: int = 1
  conv: str = 'xla'

  def validate(self) -> None:
    checks.positive(channels=self.channels, kernel_sizes=self.kernel_sizes, strides=self.strides)
    checks.one_of('conv', self.conv, ('xla', 'matmul'))
    if len(self.kernel_sizes) != len(self.strides):
      raise ValueError(f'kernel_sizes {self.kernel_sizes} and strides {self.strides} differ in length')
    if self.padding < 0:
      raise ValueError(f'padding must be >= 0, got {self.padding}')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 2:
      x = x[..., None]
    for i, (kernel, stride) in enumerate(zip(self.kernel_sizes, self.strides)):
      if self.conv == 'matmul':
        layer = MatmulConv1D(self.channels, kernel, stride, self.padding, name=f'Conv_{i}')
      else:
        layer = nn.Conv(self.channels, (kernel,), strides=(stride,), padding=[(self.padding, self.padding)],
                        name=f'Conv_{i}')
      x = nn.relu(layer(x))
    return nn.Dense(self.num_classes, name='head')(x.reshape(x.shape[0], -1))
