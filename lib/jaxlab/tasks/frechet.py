"""Fréchet distance between image sets in the feature space of a classifier jaxlab trained.

The distance of Heusel et al. (2017) between Gaussians fitted to two sets of features:
||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)). The features here are the inputs of a finished
classification run's `head` layer (LeNet-5's 84 F6 units, say), NOT Inception-v3's pool features, so
the numbers are not comparable to published FIDs; they compare runs measured with the same classifier.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import config as config_lib
from jaxlab import models
from jaxlab.errors import ConfigError
from jaxlab.tasks.attacks import PixelSpace, pixel_space

HEAD = 'head'


def distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
  """The Fréchet distance between N(mean1, cov1) and N(mean2, cov2), in float64.

  tr (C1 C2)^(1/2) is the sum of the square roots of the eigenvalues of C1^(1/2) C2 C1^(1/2), a symmetric
  positive semi-definite matrix: no complex square roots of a non-symmetric product.
  """
  mean1, cov1, mean2, cov2 = (np.asarray(a, np.float64) for a in (mean1, cov1, mean2, cov2))
  values, vectors = np.linalg.eigh(cov1)
  root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ cov2 @ root1), 0, None)).sum()
  return float(np.sum(np.square(mean1 - mean2)) + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def feature_sums(features: jax.Array, real: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of features, sum of their outer products) over the rows where `real`: what moments() needs."""
  kept = jnp.where(real[:, None], features, 0.0)
  return kept.sum(0), kept.T @ kept


def moments(total: np.ndarray, outer: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (sample) covariance from feature_sums added over batches."""
  n = float(count)
  mean = np.asarray(total, np.float64) / n
  return mean, (np.asarray(outer, np.float64) - n * np.outer(mean, mean)) / (n - 1)


def head_inputs(model: nn.Module, variables: Any, x: jax.Array) -> jax.Array:
  """What the model's layer named 'head' receives: the classifier's last features."""
  captured = []

  def capture(next_fun, args, kwargs, context):
    if context.module.name == HEAD and context.method_name == '__call__':
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply(variables, x, train=False)
  if not captured:
    raise ConfigError(f'model {type(model).__name__} has no layer named {HEAD!r} to take features from')
  return captured[-1].reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A finished classifier's features of images given as pixels in [0, 1]."""

  model: nn.Module
  variables: Any
  pixel_space: PixelSpace  # of the classifier's own inputs

  def __call__(self, pixels: jax.Array) -> jax.Array:
    return head_inputs(self.model, self.variables, self.pixel_space.to_inputs(pixels))


def load(workdir: str, read_run: Callable[[str, str], Any]) -> FeatureNet:
  """The features of the classification run in `workdir` (its newest checkpoint, read by `read_run`)."""
  task = config_lib.read_run(workdir).task
  if task != 'classification':
    raise ConfigError(f'{workdir} holds a {task!r} run; the Fréchet features need a classification run')
  run = read_run(workdir, 'the Fréchet classifier')
  return FeatureNet(models.create(run.config.model, run.num_classes), run.variables, pixel_space(run.config.data))


def set_moments(features: Callable[[jax.Array], jax.Array], pixels: np.ndarray,
                batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of the features of NHWC `pixels`, computed in batches."""
  run = jax.jit(lambda p: feature_sums(features(p), jnp.ones(p.shape[0], bool)))
  total = outer = None
  for start in range(0, len(pixels), batch_size):
    t, o = jax.device_get(run(pixels[start:start + batch_size]))
    total, outer = (t, o) if total is None else (total + t, outer + o)
  return moments(total, outer, len(pixels))
