"""Gradient accumulation: `k` micro-batches in one jitted step (a scan), one update with their mean gradient.

With equal micro-batches and a loss that is a mean over examples, this is the update of one batch
k times larger. Micro-batch i takes examples i, i+k, i+2k, ...: each device's contiguous slice of
the batch holds an equal share of every micro-batch, so splitting moves no data between devices.
Collections a model updates as it runs (BatchNorm statistics) pass from one micro-batch to the
next, and BatchNorm normalises each micro-batch by its own statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import ConfigError
from jaxlab.tasks.base import Batch, Metrics, Task
from jaxlab.tasks.state import TrainState


def micro_batches(batch: Batch, k: int) -> Batch:
  """(batch, ...) arrays -> (k, batch / k, ...); micro-batch i holds examples i, i+k, ..."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


@dataclasses.dataclass(frozen=True)
class Accumulating:
  """`base` with a train_step that accumulates gradients over `steps` micro-batches; all else is base's."""

  base: Task
  steps: int

  def __post_init__(self):
    if not (hasattr(self.base, 'gradients') and hasattr(self.base, 'apply_gradients')):
      raise ConfigError(f'train.grad_accum_steps: task {type(self.base).__name__} has no gradients() and '
                        'apply_gradients() to accumulate with')

  def __getattr__(self, name: str) -> Any:
    return getattr(self.base, name)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    micro = micro_batches(batch, self.steps)

    def one(carry, inputs):
      grad_sum, metric_sum, model_state = carry
      i, mb = inputs
      # Each micro-batch its own randomness (dropout), derived from the step's as the task derives it.
      grads, metrics, model_state = self.base.gradients(
          state.replace(model_state=model_state, rng=jax.random.fold_in(state.rng, i)), mb)
      add = lambda total, x: total + x.astype(total.dtype)
      return (jax.tree.map(add, grad_sum, grads), jax.tree.map(add, metric_sum, metrics), model_state), None

    first = jax.tree.map(lambda x: x[0], micro)
    grad_shapes, metric_shapes, _ = jax.eval_shape(self.base.gradients, state, first)
    zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32)), tree)
    (grad_sum, metric_sum, model_state), _ = jax.lax.scan(
        one, (zeros(grad_shapes), zeros(metric_shapes), state.model_state), (jnp.arange(self.steps), micro))
    grads = jax.tree.map(lambda g, like: (g / self.steps).astype(like.dtype), grad_sum, grad_shapes)
    metrics = jax.tree.map(lambda m: m / self.steps, metric_sum)
    return self.base.apply_gradients(state, grads, model_state), {**metrics, 'grad_norm': optax.tree.norm(grads)}
