"""A variational autoencoder (Kingma & Welling 2014) with MLP encoder and decoder in plain jax.numpy.

The encoder maps flattened images through ReLU layers to the mean and log-variance of q(z | x); the
decoder mirrors its widths back to one logit (Bernoulli) or mean (MSE) per pixel. The loss is the
batch mean of the per-image reconstruction nats at one reparameterised sample plus beta times the
closed-form KL to N(0, I). Binarization is the data pipeline's (on the host), so both sides get the
same binary batches. Parameters are a dict of arrays; `from_jaxlab` renames jaxlab's into it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.errors import ConfigError
from jaxlab.evaluators.references import Case, common


def mlp(x: jax.Array, layers: list[dict[str, jax.Array]]) -> jax.Array:
  """ReLU between the layers, none after the last."""
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer['w'] + layer['b'])
  return x @ layers[-1]['w'] + layers[-1]['b']


def loss(p: dict[str, Any], x: jax.Array, targets: jax.Array, eps: jax.Array, beta: float,
         bernoulli: bool) -> jax.Array:
  """Mean over the batch of reconstruction + beta * KL per image, in nats; `eps` ~ N(0, I) of shape (batch, latent)."""
  mean, log_var = jnp.split(mlp(x.reshape(x.shape[0], -1), p['encoder']), 2, axis=-1)
  outputs = mlp(mean + jnp.exp(0.5 * log_var) * eps, p['decoder'])
  targets = targets.reshape(targets.shape[0], -1)
  # -log Bernoulli(t | sigmoid(l)) = softplus(l) - t * l
  per_pixel = jax.nn.softplus(outputs) - targets * outputs if bernoulli else jnp.square(outputs - targets)
  kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var, axis=-1)
  return jnp.mean(per_pixel.sum(-1) + beta * kl)


def _dense_stack(p: dict[str, Any]) -> list[dict[str, Any]]:
  names = sorted(p, key=lambda k: int(k.split('_')[1]))
  return [{'w': p[n]['kernel'], 'b': p[n]['bias']} for n in names]


def from_jaxlab(params: dict[str, Any]) -> dict[str, Any]:
  """jaxlab's MLP Autoencoder parameters (models/generative.py names) in the reference's layout."""
  return {'encoder': _dense_stack(params['encoder']), 'decoder': _dense_stack(params['decoder'])}


def case(config: ml_collections.ConfigDict, program: Any = None) -> Case:
  """The MLP VAE reference, set up from the initial parameters of jaxlab's program for `config`."""
  if config.model.get('architecture', 'mlp') != 'mlp':
    raise ConfigError(f'bench --bench_against=reference: only the MLP VAE has a reference, not model.architecture '
                      f'{config.model.architecture!r}')
  setup = common.setup(config, program)
  params = from_jaxlab(setup.params)
  beta, bernoulli = setup.task.beta, setup.task.loss == 'bernoulli'
  mean, std = np.asarray(config.data.mean, np.float32), np.asarray(config.data.std, np.float32)
  latent = params['encoder'][-1]['b'].shape[0] // 2
  def noisy_loss(p: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
    x = batch['x']  # normalised inputs; the targets are the pixels in [0, 1] they came from
    eps = jax.random.normal(key, (x.shape[0], latent), x.dtype)
    return loss(p, x, x * std + mean, eps, beta, bernoulli)

  # The check: jaxlab's own training loss (its task's `gradients`, from its initial state on the first batch)
  # against the reference's with the same noise, jaxlab's step-0 draw recomputed from its per-image keys. It
  # covers the encoder, the split into mean and log-variance, the reparameterisation at a nonzero sample, the
  # decoder, the likelihood, the KL, beta and the batch mean; the reference trains with its own draws.
  check, state = setup.first_batch, setup.state
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), check['x'].shape[0])
  check_eps = jax.vmap(lambda k: jax.random.normal(k, (latent,)))(keys)
  _, metrics, _ = setup.task.gradients(state, check)
  reference_loss = loss(params, check['x'], check['x'] * std + mean, check_eps, beta, bernoulli)
  return common.gradient_case(setup, params, noisy_loss, metrics['loss'], reference_loss, config.seed)
