"""Generative adversarial networks (Goodfellow et al. 2014) with the non-saturating generator loss.

One model (models.generative.DCGAN) holds both networks, so `params`, `opt_state` and the BatchNorm
statistics are dicts {'generator': ..., 'discriminator': ...}; each network has its own optax
transformation and only its own step touches it. A training batch is split into
`discriminator_steps` parts: one discriminator step on each, then one generator step. Images are
[-1, 1] to both networks, whatever the data normalisation.

Evaluation, given a Fréchet classifier (jaxlab.tasks.frechet): the Fréchet distance between as many
generated images as the split has and the split itself, beside `frechet_floor`, the same distance
between as many training images (drawn once from a fixed seed) and the split, so each split has its
own floor. Generated image i always comes from the noise of base.example_keys (key (0, i)). Each
evaluation also writes a grid of samples from one fixed noise batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.observe import images
from jaxlab.tasks import frechet
from jaxlab.tasks.attacks import PixelSpace
from jaxlab.tasks.base import Batch, Metrics, example_keys
from jaxlab.tasks.state import TrainState

NETWORKS = ('generator', 'discriminator')
SAMPLE_KEY = 1  # the fixed noise batch of the samples shown at each evaluation


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """-log D(x) - log(1 - D(G(z))), batch means, from logits."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The non-saturating loss -log D(G(z))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


@dataclasses.dataclass
class FrechetReference:
  """The Fréchet classifier, and the moments of training images behind each split's floor."""

  net: frechet.FeatureNet
  train_pixels: Callable[[], np.ndarray]  # the NHWC training images in [0, 1]
  _train_moments: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

  def train_moments(self, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature moments of `count` training images, drawn once per count from a fixed seed."""
    if count not in self._train_moments:
      train = self.train_pixels()
      train = train[np.sort(np.random.default_rng(0).choice(len(train), min(len(train), count), replace=False))]
      self._train_moments[count] = frechet.set_moments(self.net, train)
    return self._train_moments[count]


@dataclasses.dataclass(frozen=True)
class GAN:
  model: nn.Module  # DCGAN: generate(z, train), discriminate(x, train)
  generator_tx: optax.GradientTransformation
  discriminator_tx: optax.GradientTransformation
  pixel_space: PixelSpace
  discriminator_steps: int = 1
  reference: FrechetReference | None = None

  @property
  def txs(self) -> dict[str, optax.GradientTransformation]:
    return {'generator': self.generator_tx, 'discriminator': self.discriminator_tx}

  def to_model(self, x: jax.Array) -> jax.Array:
    return 2 * self.pixel_space.to_pixels(x) - 1

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    params_rng, state_rng = jax.random.split(rng)
    variables = self.model.init(params_rng, self.to_model(batch['x']), train=False)
    params = variables.pop('params')
    opt_state = {name: self.txs[name].init(params[name]) for name in NETWORKS}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      model_state=dict(variables), rng=state_rng)

  def _noise(self, rng: jax.Array, n: int) -> jax.Array:
    return jax.random.normal(rng, (n, self.model.latent))

  def _apply(self, params: Any, model_state: Any, method: str, x: jax.Array) -> tuple[jax.Array, Any]:
    return self.model.apply({'params': params, **model_state}, x, train=True, method=method,
                            mutable=list(model_state))

  def _discriminator_loss(self, d_params: Any, params: Any, model_state: Any, real: jax.Array, z: jax.Array):
    params = {**params, 'discriminator': d_params}
    fake, _ = self._apply(params, model_state, 'generate', z)  # the generator's statistics move in its own step
    real_logits, model_state = self._apply(params, model_state, 'discriminate', real)
    fake_logits, model_state = self._apply(params, model_state, 'discriminate', jax.lax.stop_gradient(fake))
    aux = {'d_real': jnp.mean(jax.nn.sigmoid(real_logits)), 'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))}
    return discriminator_loss(real_logits, fake_logits), (model_state, aux)

  def _generator_loss(self, g_params: Any, params: Any, model_state: Any, z: jax.Array):
    params = {**params, 'generator': g_params}
    fake, updated = self._apply(params, model_state, 'generate', z)
    fake_logits, _ = self._apply(params, updated, 'discriminate', fake)  # the discriminator's stay as they were
    return generator_loss(fake_logits), updated

  def _update(self, state: TrainState, name: str, grads: Any, model_state: Any) -> TrainState:
    updates, opt_state = self.txs[name].update(grads, state.opt_state[name], state.params[name])
    return state.replace(params={**state.params, name: optax.apply_updates(state.params[name], updates)},
                         opt_state={**state.opt_state, name: opt_state}, model_state=model_state)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    parts = jnp.split(self.to_model(batch['x']), self.discriminator_steps)
    d_grad = jax.value_and_grad(self._discriminator_loss, has_aux=True)
    for i, real in enumerate(parts):
      z = self._noise(jax.random.fold_in(rng, i), real.shape[0])
      (d_loss, (model_state, aux)), grads = d_grad(state.params['discriminator'], state.params, state.model_state,
                                                   real, z)
      state = self._update(state, 'discriminator', grads, model_state)
    z = self._noise(jax.random.fold_in(rng, self.discriminator_steps), parts[0].shape[0])
    (g_loss, model_state), g_grads = jax.value_and_grad(self._generator_loss, has_aux=True)(
        state.params['generator'], state.params, state.model_state, z)
    state = self._update(state, 'generator', g_grads, model_state).replace(step=state.step + 1)
    return state, {'loss': d_loss + g_loss, 'd_loss': d_loss, 'g_loss': g_loss, **aux,
                   'd_grad_norm': optax.tree.norm(grads), 'g_grad_norm': optax.tree.norm(g_grads)}

  def generate(self, state: TrainState, z: jax.Array) -> jax.Array:
    """Images as pixels in [0, 1] from noise z, the generator in evaluation mode."""
    fake = self.model.apply({'params': state.params, **state.model_state}, z, train=False, method='generate')
    return (fake + 1) / 2

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    """Feature sums of the batch's real images and of as many generated ones (none without a Fréchet classifier).

    The discriminator is not evaluated: its BatchNorm running statistics average real and generated
    batches, so its evaluation-mode outputs say little about either."""
    real = batch['mask'] > 0
    sums = {'count': jnp.sum(real, dtype=jnp.int32)}
    if self.reference is not None:
      keys = example_keys(batch)
      fake = self.generate(state, jax.vmap(lambda k: self._noise(k, 1)[0])(keys))
      net = self.reference.net
      sums['real_features'], sums['real_outer'] = frechet.feature_sums(net(self.pixel_space.to_pixels(batch['x'])), real)
      sums['fake_features'], sums['fake_outer'] = frechet.feature_sums(net(fake), real)
    return sums

  def summarize(self, sums: dict[str, Any]) -> dict[str, np.ndarray]:
    """The Fréchet distance and its floor per replica (sums may have leading replica axes)."""
    if 'real_features' not in sums:
      return {}
    count = np.asarray(sums['count'])
    distances, floors = np.zeros(count.shape), np.zeros(count.shape)
    for i in np.ndindex(count.shape):
      real = frechet.moments(sums['real_features'][i], sums['real_outer'][i], count[i])
      distances[i] = frechet.distance(*real, *frechet.moments(sums['fake_features'][i], sums['fake_outer'][i], count[i]))
      floors[i] = frechet.distance(*real, *self.reference.train_moments(int(count[i])))
    return {'frechet': distances, 'frechet_floor': floors}

  def sample_images(self, state: TrainState, key: jax.Array, num: int) -> np.ndarray:
    return np.asarray(self.generate(state, self._noise(key, num)))

  def showcase(self, state: TrainState) -> dict[str, np.ndarray]:
    return {'samples': images.grid(self.sample_images(state, jax.random.key(SAMPLE_KEY), 64))}
