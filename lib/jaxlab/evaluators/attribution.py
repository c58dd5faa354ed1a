"""Attribution maps of a classifier's target logit with respect to its input, in pixel space.

Gradients are taken with respect to pixels p (attacks.PixelSpace), not the normalised inputs, so
the maps of a normalised and an unnormalised model read alike. The baseline of grad x input and
integrated gradients is the zero pixel image (black), or the zero input where there is no pixel scale.

- saliency: |d logit / dp| (Simonyan et al. 2014)
- grad_x_input: d logit / dp * (p - baseline) (Shrikumar et al. 2016)
- integrated_gradients: (p - baseline) * the mean gradient along the straight path, trapezoid rule
  (Sundararajan et al. 2017); its sum is logit(p) - logit(baseline) up to the quadrature error
- smoothgrad: the mean gradient at p + N(0, sigma^2), sigma = noise * (max - min of p) (Smilkov et al. 2017)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from jaxlab.tasks.attacks import PixelSpace

METHODS = ('saliency', 'grad_x_input', 'integrated_gradients', 'smoothgrad')
LogitsFn = Callable[[jax.Array], jax.Array]


def _target_gradient(logits_fn: LogitsFn, space: PixelSpace, targets: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """pixels (batch, ...) -> d logit[target] / d pixels, each example's own target."""
  def total_target_logit(pixels):
    logits = logits_fn(space.to_inputs(pixels))
    return jnp.sum(jnp.take_along_axis(logits, targets[:, None], axis=-1))
  return jax.grad(total_target_logit)


def target_logits(logits_fn: LogitsFn, space: PixelSpace, pixels: jax.Array, targets: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits_fn(space.to_inputs(pixels)), targets[:, None], axis=-1)[:, 0]


def integrated_gradients(grad_fn: Callable[[jax.Array], jax.Array], pixels: jax.Array, baseline: jax.Array,
                         steps: int) -> jax.Array:
  """(p - b) times the trapezoid-rule mean of the gradient at b + a (p - b), a = 0, 1/steps, ..., 1."""
  alphas = jnp.linspace(0.0, 1.0, steps + 1)
  weights = jnp.full((steps + 1,), 1.0 / steps).at[jnp.array([0, steps])].set(0.5 / steps)

  def accumulate(total, alpha_weight):
    alpha, weight = alpha_weight
    return total + weight * grad_fn(baseline + alpha * (pixels - baseline)), None

  mean_gradient, _ = jax.lax.scan(accumulate, jnp.zeros_like(pixels), (alphas, weights))
  return (pixels - baseline) * mean_gradient


def smoothgrad(grad_fn: Callable[[jax.Array], jax.Array], pixels: jax.Array, key: jax.Array, samples: int,
               noise: float) -> jax.Array:
  axes = tuple(range(1, pixels.ndim))
  sigma = noise * (jnp.max(pixels, axes, keepdims=True) - jnp.min(pixels, axes, keepdims=True))

  def accumulate(total, sample_key):
    return total + grad_fn(pixels + sigma * jax.random.normal(sample_key, pixels.shape, pixels.dtype)), None

  total, _ = jax.lax.scan(accumulate, jnp.zeros_like(pixels), jax.random.split(key, samples))
  return total / samples


def attribute(method: str, logits_fn: LogitsFn, space: PixelSpace, inputs: jax.Array, targets: jax.Array,
              key: jax.Array, ig_steps: int = 256, smoothgrad_samples: int = 50,
              smoothgrad_noise: float = 0.15) -> jax.Array:
  """The `method`'s map, shaped like `inputs`, of each example's target logit (pure; jit it whole)."""
  grad_fn = _target_gradient(logits_fn, space, targets)
  pixels = space.to_pixels(inputs)
  baseline = jnp.zeros_like(pixels)
  if method == 'saliency':
    return jnp.abs(grad_fn(pixels))
  if method == 'grad_x_input':
    return grad_fn(pixels) * (pixels - baseline)
  if method == 'integrated_gradients':
    return integrated_gradients(grad_fn, pixels, baseline, ig_steps)
  if method == 'smoothgrad':
    return smoothgrad(grad_fn, pixels, key, smoothgrad_samples, smoothgrad_noise)
  raise ValueError(f'unknown attribution method {method!r}; known: {", ".join(METHODS)}')


def per_position(method: str, maps: np.ndarray) -> np.ndarray:
  """One value per pixel (or 1-D position): channels reduced by max |.| for saliency, else summed."""
  if maps.ndim <= 2:
    return maps
  return np.max(np.abs(maps), -1) if method == 'saliency' else np.sum(maps, -1)


def rank_correlations(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
  """Per example, Spearman's rank correlation between the absolute values of two maps (Adebayo et al. 2018)."""
  a, b = np.abs(maps_a).reshape(len(maps_a), -1), np.abs(maps_b).reshape(len(maps_b), -1)
  return np.array([scipy.stats.spearmanr(x, y).statistic for x, y in zip(a, b)])
