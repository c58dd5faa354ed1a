"""Generative models for NHWC images: (variational) autoencoders and the DCGAN pair.

Decoders and generators return pixel values before their output nonlinearity: Bernoulli logits or
means for an autoencoder (the task's loss chooses), tanh pre-activations for the GAN generator.
`image_shape` comes from the data, not the config; the tasks fill it in (and `variational`).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models import checks

ARCHITECTURES = ('mlp', 'conv')


class MLPEncoder(nn.Module):
  hidden: Sequence[int]
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.outputs)(x)


class MLPDecoder(nn.Module):
  hidden: Sequence[int]
  image_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    for width in self.hidden:
      z = nn.relu(nn.Dense(width)(z))
    return nn.Dense(math.prod(self.image_shape))(z).reshape(z.shape[0], *self.image_shape)


class ConvEncoder(nn.Module):
  """Stride-2 4x4 convolutions halve the image per entry of `channels`, then one dense layer."""

  channels: Sequence[int]
  outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.channels:
      x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2))(x))
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1))


class ConvDecoder(nn.Module):
  """The mirror of ConvEncoder: a dense layer to the smallest feature map, then stride-2 transposed convolutions."""

  channels: Sequence[int]  # as the encoder lists them; used in reverse
  image_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h, w, c = self.image_shape
    scale = 2 ** len(self.channels)
    widths = list(reversed(self.channels))
    x = nn.relu(nn.Dense(h // scale * w // scale * widths[0])(z)).reshape(z.shape[0], h // scale, w // scale, widths[0])
    for width in widths[1:]:
      x = nn.relu(nn.ConvTranspose(width, (4, 4), strides=(2, 2))(x))
    return nn.ConvTranspose(c, (4, 4), strides=(2, 2))(x)


def _check_divisible(image_shape: tuple[int, int, int], halvings: int) -> None:
  scale = 2 ** halvings
  if image_shape[0] % scale or image_shape[1] % scale:
    raise ValueError(f'images of {image_shape[0]}x{image_shape[1]} cannot be halved {halvings} times; '
                     f'the convolutional models need sides divisible by {scale}')


class Autoencoder(nn.Module):
  """x -> code of `latent` numbers -> x. Variational: the encoder gives a Gaussian's mean and log-variance."""

  image_shape: tuple[int, int, int]
  architecture: str = 'mlp'
  hidden: Sequence[int] = (500,)  # mlp: the encoder's widths; the decoder mirrors them
  channels: Sequence[int] = (32, 64)  # conv
  latent: int = 20
  variational: bool = False

  def validate(self) -> None:
    checks.one_of('architecture', self.architecture, ARCHITECTURES)
    checks.positive(latent=self.latent, hidden=tuple(self.hidden) or (1,), channels=tuple(self.channels) or (1,))
    if self.architecture == 'conv':
      _check_divisible(self.image_shape, len(self.channels))

  def setup(self):
    outputs = 2 * self.latent if self.variational else self.latent
    if self.architecture == 'mlp':
      self.encoder = MLPEncoder(self.hidden, outputs)
      self.decoder = MLPDecoder(tuple(reversed(self.hidden)), self.image_shape)
    else:
      self.encoder = ConvEncoder(self.channels, outputs)
      self.decoder = ConvDecoder(self.channels, self.image_shape)

  def encode(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The code; variational: (mean, log-variance) of q(z | x)."""
    out = self.encoder(x)
    return tuple(jnp.split(out, 2, axis=-1)) if self.variational else out

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    code = self.encode(x)
    return self.decode(code[0] if self.variational else code)


class Generator(nn.Module):
  """DCGAN (Radford et al. 2016) for small images: dense -> 2 transposed convolutions, BatchNorm and ReLU between."""

  image_shape: tuple[int, int, int]
  features: int

  @nn.compact
  def __call__(self, z: jax.Array, train: bool) -> jax.Array:
    h, w, c = self.image_shape
    norm = lambda x: nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = norm(nn.Dense(h // 4 * w // 4 * 2 * self.features)(z)).reshape(z.shape[0], h // 4, w // 4, 2 * self.features)
    x = norm(nn.ConvTranspose(self.features, (4, 4), strides=(2, 2))(x))
    return nn.ConvTranspose(c, (4, 4), strides=(2, 2))(x)


class Discriminator(nn.Module):
  """Two stride-2 convolutions with LeakyReLU(0.2), then one logit. BatchNorm on the second, or spectral
  normalisation (Miyato et al. 2018) of every layer instead."""

  features: int
  spectral_norm: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layer = (lambda module: lambda y: nn.SpectralNorm(module)(y, update_stats=train)) if self.spectral_norm else (
        lambda module: module)
    x = nn.leaky_relu(layer(nn.Conv(self.features, (4, 4), strides=(2, 2)))(x), 0.2)
    x = layer(nn.Conv(2 * self.features, (4, 4), strides=(2, 2)))(x)
    if not self.spectral_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.leaky_relu(x, 0.2)
    return layer(nn.Dense(1))(x.reshape(x.shape[0], -1))[:, 0]


class DCGAN(nn.Module):
  """A generator and a discriminator: params {'generator': ..., 'discriminator': ...}, one tree the task splits."""

  image_shape: tuple[int, int, int]
  latent: int = 100
  features: int = 64
  spectral_norm: bool = False

  def validate(self) -> None:
    checks.positive(latent=self.latent, features=self.features)
    _check_divisible(self.image_shape, 2)

  def setup(self):
    self.generator = Generator(self.image_shape, self.features)
    self.discriminator = Discriminator(self.features, self.spectral_norm)

  def generate(self, z: jax.Array, train: bool = False) -> jax.Array:
    """Images in [-1, 1] from noise `z` of shape (n, latent)."""
    return jnp.tanh(self.generator(z, train))

  def discriminate(self, x: jax.Array, train: bool = False) -> jax.Array:
    """One logit per image: how real it looks."""
    return self.discriminator(x, train)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    fake = self.generate(jnp.zeros((x.shape[0], self.latent), x.dtype), train)
    return self.discriminate(jnp.concatenate([x, fake]), train)
