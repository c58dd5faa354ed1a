"""Autoencoders and variational autoencoders (Kingma & Welling 2014) on images.

Targets are the images' pixels in [0, 1], whatever the data normalisation (PixelSpace undoes it).
Losses are per image, summed over pixels: nats for the Bernoulli likelihood, squared error for MSE.
Evaluation draws its noise from (a fixed key, each example's row in the split), so every evaluation
and every batching of the same split sees the same draws. Each evaluation writes pictures:
test images above their reconstructions, and for a VAE samples from a fixed noise batch and, with a
2-d latent, the decoded latent manifold.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.observe import images
from jaxlab.tasks.attacks import PixelSpace
from jaxlab.tasks.base import Batch, Metrics, OneModel, example_keys
from jaxlab.tasks.state import TrainState

LOSSES = ('bernoulli', 'mse')
SAMPLE_KEY = 1  # the fixed noise batch of the samples shown at each evaluation
LOG_2PI = math.log(2 * math.pi)


def reconstruction_loss(outputs: jax.Array, targets: jax.Array, loss: str) -> jax.Array:
  """Per image: -log Bernoulli(targets | sigmoid(outputs)) in nats, or the summed squared error."""
  if loss == 'bernoulli':
    # -t log sigmoid(l) - (1 - t) log sigmoid(-l) = softplus(l) - t l: one softplus per pixel where optax's
    # sigmoid_binary_cross_entropy evaluates two log-sigmoids.
    per_pixel = jax.nn.softplus(outputs) - targets * outputs
  else:
    per_pixel = jnp.square(outputs - targets)
  return per_pixel.reshape(per_pixel.shape[0], -1).sum(-1)


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """Per example: KL(N(mean, exp(log_var)) || N(0, I)) in nats, in closed form."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var, axis=-1)


def gaussian_log_density(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """log N(z; mean, exp(log_var)) summed over the last axis."""
  return -0.5 * jnp.sum(LOG_2PI + log_var + jnp.square(z - mean) / jnp.exp(log_var), axis=-1)


@dataclasses.dataclass(frozen=True)
class _Reconstructing(OneModel):
  """What the autoencoder and the VAE share: targets, pictures, and how outputs become pixels."""

  model: nn.Module
  tx: optax.GradientTransformation
  loss: str
  pixel_space: PixelSpace
  shown: np.ndarray  # test inputs whose reconstructions each evaluation shows

  def targets(self, batch: Batch) -> jax.Array:
    return self.pixel_space.to_pixels(batch['x'])

  def to_pixels(self, outputs: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(outputs) if self.loss == 'bernoulli' else outputs

  def reconstruct(self, params: Any, x: jax.Array) -> jax.Array:
    return self.to_pixels(self.model.apply({'params': params}, x))

  def showcase(self, state: TrainState) -> dict[str, np.ndarray]:
    if not len(self.shown):
      return {}
    reconstructions = np.asarray(jax.jit(self.reconstruct)(state.params, self.shown))
    return {'reconstructions': images.pairs(np.asarray(self.pixel_space.to_pixels(self.shown)), reconstructions)}

  def _masked_sums(self, batch: Batch, **per_example: jax.Array) -> Metrics:
    real = batch['mask'] > 0
    sums = {k: jnp.sum(jnp.where(real, v, 0.0)) for k, v in per_example.items()}
    return {**sums, 'count': jnp.sum(real, dtype=jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Autoencoder(_Reconstructing):
  """Reconstruction of the input through a `latent`-sized code; `denoise` > 0 corrupts the training inputs with
  Gaussian noise of that standard deviation (on the pixel scale) first."""

  denoise: float = 0.0

  def _loss(self, params: Any, state: TrainState, batch: Batch) -> tuple[jax.Array, jax.Array]:
    x = batch['x']
    if self.denoise:
      noise = jax.random.normal(jax.random.fold_in(state.rng, state.step), x.shape, x.dtype)
      x = x + noise * self.denoise / jnp.asarray(self.pixel_space.std, x.dtype)
    outputs = self.model.apply({'params': params}, x)
    return reconstruction_loss(outputs, self.targets(batch), self.loss).mean(), outputs

  def gradients(self, state: TrainState, batch: Batch) -> tuple[Any, Metrics, Any]:
    (loss, outputs), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, state, batch)
    mse = jnp.mean(jnp.square(self.to_pixels(outputs) - self.targets(batch)))
    return grads, {'loss': loss, 'mse': mse}, state.model_state

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    outputs = self.model.apply({'params': state.params}, batch['x'])
    targets = self.targets(batch)
    squared = jnp.square(self.to_pixels(outputs) - targets)
    return self._masked_sums(batch, loss=reconstruction_loss(outputs, targets, self.loss),
                             mse=squared.reshape(squared.shape[0], -1).mean(-1))


@dataclasses.dataclass(frozen=True)
class VAE(_Reconstructing):
  """Loss: reconstruction + beta * KL (the negative ELBO when beta is 1), per image in nats. Evaluation reports
  the negative ELBO with beta 1 (`loss`, one sample of z per image), its two terms, and with iwae_samples = k
  > 0 the importance-weighted bound -log (1/k) sum_i p(x, z_i) / q(z_i | x) (Burda et al. 2016), an upper
  bound on -log p(x) that tightens as k grows."""

  beta: float = 1.0
  iwae_samples: int = 0

  def reconstruct(self, params: Any, x: jax.Array) -> jax.Array:
    mean, _ = self.model.apply({'params': params}, x, method='encode')
    return self.to_pixels(self.model.apply({'params': params}, mean, method='decode'))

  def _terms(self, params: Any, batch: Batch, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per image: (reconstruction nats at one sample of z, KL)."""
    mean, log_var = self.model.apply({'params': params}, batch['x'], method='encode')
    eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[-1:], mean.dtype))(keys)
    outputs = self.model.apply({'params': params}, mean + jnp.exp(0.5 * log_var) * eps, method='decode')
    return reconstruction_loss(outputs, self.targets(batch), self.loss), gaussian_kl(mean, log_var)

  def _loss(self, params: Any, state: TrainState, batch: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), batch['x'].shape[0])
    reconstruction, kl = self._terms(params, batch, keys)
    return jnp.mean(reconstruction + self.beta * kl), (reconstruction.mean(), kl.mean())

  def gradients(self, state: TrainState, batch: Batch) -> tuple[Any, Metrics, Any]:
    (loss, (reconstruction, kl)), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, state, batch)
    return grads, {'loss': loss, 'reconstruction': reconstruction, 'kl': kl}, state.model_state

  def iwae_bound(self, params: Any, batch: Batch, keys: jax.Array, k: int) -> jax.Array:
    """Per image: -log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x), z_i ~ q(z | x), one sample at a time."""
    mean, log_var = self.model.apply({'params': params}, batch['x'], method='encode')
    targets = self.targets(batch)

    def add_sample(running, i):
      eps = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, i), mean.shape[-1:], mean.dtype))(keys)
      z = mean + jnp.exp(0.5 * log_var) * eps
      outputs = self.model.apply({'params': params}, z, method='decode')
      log_weight = (-reconstruction_loss(outputs, targets, self.loss) + gaussian_log_density(z, 0.0, 0.0)
                    - gaussian_log_density(z, mean, log_var))
      return jnp.logaddexp(running, log_weight), None

    total, _ = jax.lax.scan(add_sample, jnp.full(mean.shape[:1], -jnp.inf, mean.dtype), jnp.arange(k))
    return -(total - math.log(k))

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    keys = example_keys(batch)
    reconstruction, kl = self._terms(state.params, batch, keys)
    per_example = {'loss': reconstruction + kl, 'reconstruction': reconstruction, 'kl': kl}
    if self.iwae_samples:
      iwae_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
      per_example[f'iwae{self.iwae_samples}_nll'] = self.iwae_bound(state.params, batch, iwae_keys, self.iwae_samples)
    return self._masked_sums(batch, **per_example)

  def sample_images(self, state: TrainState, key: jax.Array, num: int) -> np.ndarray:
    """`num` images decoded from z ~ N(0, I), as pixels in [0, 1]."""
    z = jax.random.normal(key, (num, self.model.latent))
    return np.asarray(self.to_pixels(self.model.apply({'params': state.params}, z, method='decode')))

  def manifold(self, state: TrainState, side: int = 20) -> np.ndarray:
    """A 2-d latent's decodings on a side x side lattice at the Gaussian's quantiles 0.05 ... 0.95."""
    from scipy.stats import norm
    values = norm.ppf(np.linspace(0.05, 0.95, side))
    z = np.stack(np.meshgrid(values, values[::-1]), -1).reshape(-1, 2).astype(np.float32)
    return np.asarray(self.to_pixels(self.model.apply({'params': state.params}, z, method='decode')))

  def showcase(self, state: TrainState) -> dict[str, np.ndarray]:
    shown = super().showcase(state)
    shown['samples'] = images.grid(self.sample_images(state, jax.random.key(SAMPLE_KEY), 64))
    if self.model.latent == 2:
      shown['manifold'] = images.grid(self.manifold(state), 20, gap=0)
    return shown
