"""Residual networks (He et al. 2016) with BatchNorm; statistics live in the 'batch_stats' collection.

`style='cifar'`: depth 6n+2 (20, 32, 56, 110), 16/32/64 channels on 32x32 inputs, identity
shortcuts that subsample and zero-pad channels (the paper's option A). `style='imagenet'`:
depth 18/34 (basic blocks) or 50/101/152 (bottlenecks), 7x7 stem, projection shortcuts.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL_INIT = nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out'))
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def stage_sizes(style: str, depth: int) -> tuple[int, ...]:
  """Blocks per stage for a depth; a clear error for depths the style does not define."""
  if style == 'cifar':
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f'CIFAR-style ResNet depth must be 6n+2 (20, 32, 56, 110), got {depth}')
    return ((depth - 2) // 6,) * 3
  if style == 'imagenet':
    if depth not in IMAGENET_STAGES:
      raise ValueError(f'ImageNet-style ResNet depth must be one of {sorted(IMAGENET_STAGES)}, got {depth}')
    return IMAGENET_STAGES[depth]
  raise ValueError(f"ResNet style must be 'cifar' or 'imagenet', got {style!r}")


def conv(features: int, size: tuple[int, int], strides: int = 1, **kwargs) -> nn.Conv:
  """A convolution without bias whose kernel names its channel dimensions for the sharding rules."""
  return nn.Conv(features, size, strides, use_bias=False, kernel_init=KERNEL_INIT, **kwargs)


class BasicBlock(nn.Module):
  features: int
  strides: int
  norm: Callable
  projection: bool  # False: CIFAR option A (subsample + zero-pad channels)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm()(conv(self.features, (3, 3), self.strides)(x)))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(self.features, (3, 3))(y))
    return nn.relu(y + _shortcut(x, self.features, self.strides, self.norm, self.projection))


class Bottleneck(nn.Module):
  features: int
  strides: int
  norm: Callable
  projection: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm()(conv(self.features, (1, 1))(x)))
    y = nn.relu(self.norm()(conv(self.features, (3, 3), self.strides)(y)))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(4 * self.features, (1, 1))(y))
    return nn.relu(y + _shortcut(x, 4 * self.features, self.strides, self.norm, self.projection))


def _shortcut(x: jax.Array, features: int, strides: int, norm: Callable, projection: bool) -> jax.Array:
  if x.shape[-1] == features and strides == 1:
    return x
  if projection:
    return norm()(conv(features, (1, 1), strides)(x))
  x = x[:, ::strides, ::strides]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))


class ResNet(nn.Module):
  num_classes: int
  depth: int = 20
  style: str = 'cifar'
  bn_momentum: float = 0.9

  def validate(self) -> None:
    stage_sizes(self.style, self.depth)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    stages = stage_sizes(self.style, self.depth)
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5, **kw)
    if self.style == 'cifar':
      x = nn.relu(norm()(conv(16, (3, 3))(x)))
      widths, block = (16, 32, 64), BasicBlock
    else:
      x = nn.relu(norm()(conv(64, (7, 7), 2, padding=[(3, 3), (3, 3)])(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
      widths, block = (64, 128, 256, 512), BasicBlock if self.depth < 50 else Bottleneck
    for i, (width, blocks) in enumerate(zip(widths, stages)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(width, strides, norm, projection=self.style != 'cifar')(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ('embed', 'classes')), name='head')(x)
