"""Max-norm constraint (Hinton et al. 2012; Srivastava et al. 2014): every unit's incoming weights stay in a ball.

After each update, each kernel's incoming weight vector to an output unit (all axes but the last: a Dense
column, a conv filter) whose L2 norm exceeds `limit` is scaled back onto the sphere of radius `limit`.
Biases, norms' scales and embeddings are left alone: only leaves named `kernel` are constrained.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import ConfigError


def project(kernel: jax.Array, limit: float) -> jax.Array:
  """`kernel` with each output unit's incoming weights scaled to norm <= limit (shorter ones unchanged)."""
  norms = jnp.sqrt(jnp.sum(jnp.square(kernel), axis=tuple(range(kernel.ndim - 1)), keepdims=True))
  return kernel * jnp.minimum(1.0, limit / jnp.maximum(norms, 1e-12))


def _is_kernel(path: tuple[Any, ...]) -> bool:
  return bool(path) and getattr(path[-1], 'key', None) == 'kernel'


def max_norm(limit: float) -> optax.GradientTransformation:
  """Changes the updates so that params + updates is the projection of the unconstrained step."""
  if not limit > 0:
    raise ConfigError(f'optimizer.max_norm must be > 0 (0 turns it off), got {limit}')

  def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
    if params is None:
      raise ValueError('max_norm needs the parameters: call update(updates, state, params)')
    constrain = lambda path, u, w: project(w + u, limit) - w if _is_kernel(path) and w.ndim >= 2 else u
    return jax.tree_util.tree_map_with_path(constrain, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
