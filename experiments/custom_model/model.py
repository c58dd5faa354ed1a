"""A model defined outside jaxlab: a residual depthwise-separable 1-D CNN for MNIST-1D.

Named in a config as `model.name='experiments.custom_model.model:SeparableCNN1D'`; nothing in
lib/ knows it. Like the built-in models it checks its own attributes in `validate()`.
"""

import flax.linen as nn
import jax

from jaxlab.models import checks


class SeparableCNN1D(nn.Module):
  """Pointwise lift to `channels`, then `depth` blocks of depthwise conv -> ReLU -> pointwise conv,
  each added to its input and max-pooled by 2; a linear classifier on the flattened result."""

  num_classes: int
  channels: int = 32
  depth: int = 3
  kernel_size: int = 5

  def validate(self) -> None:
    checks.positive(channels=self.channels, depth=self.depth, kernel_size=self.kernel_size)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 2:
      x = x[..., None]
    x = nn.Conv(self.channels, (1,))(x)
    for _ in range(self.depth):
      y = nn.Conv(self.channels, (self.kernel_size,), feature_group_count=self.channels)(x)
      y = nn.Conv(self.channels, (1,))(nn.relu(y))
      x = nn.max_pool(nn.relu(x + y), (2,), (2,))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
