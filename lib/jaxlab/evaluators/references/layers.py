"""The plain-JAX pieces several references share: dense and normalisation layers, dropout, weight penalties."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * p['scale']
  return y + p['bias'] if 'bias' in p else y


def dense(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  y = x @ p['w']
  return y + p['b'] if 'b' in p else y


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  return jnp.where(jax.random.bernoulli(key, 1.0 - rate, x.shape), x / (1.0 - rate), 0.0)


def penalised(params: dict[str, Any], paths: str) -> dict[str, Any]:
  """Boolean arrays shaped like jaxlab's `params`, all True on the kernels whose path ('Conv_0/kernel') the regex
  `paths` (loss.penalty_paths) matches at its start, as jaxlab's penalty chooses them: arrays, so that
  `from_jaxlab` carries them into the reference's layout as it carries the parameters, reshapes included."""
  pattern = re.compile(paths)

  def mark(path: Any, w: Any) -> np.ndarray:
    chosen = path[-1].key == 'kernel' and pattern.match('/'.join(k.key for k in path)) is not None
    return np.full(np.shape(w), chosen)
  return jax.tree_util.tree_map_with_path(mark, params)


def penalty(p: Any, marked: Any, l1: float, l2: float) -> jax.Array | float:
  """l1 * sum|w| + l2/2 * sum w^2 over the arrays of `p` that `marked` (the same tree, of booleans) marks."""
  weights = [w for w, on in zip(jax.tree.leaves(p), jax.tree.leaves(marked)) if on.all()]
  total = 0.0  # a term of zero weight is left out: the step computes no sums it would discard
  if l1:
    total += l1 * sum(jnp.abs(w).sum() for w in weights)
  if l2:
    total += 0.5 * l2 * sum(jnp.square(w).sum() for w in weights)
  return total
