"""What every reference takes from jaxlab's program for a config: initial parameters, optimizer, data."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.core import meta

from jaxlab.evaluators.references import Case
from jaxlab.run import program as program_lib


@dataclasses.dataclass
class Setup:
  program: Any
  task: Any  # jaxlab's task, for its model and loss in the equal-loss check only
  state: Any  # jaxlab's initial TrainState, on the host
  params: Any  # its parameters as plain numpy arrays
  tx: optax.GradientTransformation  # the optimizer of jaxlab's run (optax either way: the same update rule)
  first_batch: dict[str, np.ndarray]
  batches: Callable[[], Iterator[dict[str, np.ndarray]]]


def setup(config: ml_collections.ConfigDict, program: Any = None) -> Setup:
  program = program_lib.build(config) if program is None else program
  state = jax.device_get(meta.unbox(program.init_state()))
  first = next(iter(program.source.train_batches(0)))
  return Setup(program=program, task=program.task, state=state, params=state.params, tx=program.task.tx,
               first_batch=first, batches=lambda: iter(program.source.train_batches(0)))


def fresh(params: Any, tx: optax.GradientTransformation, *extra: Any) -> tuple[Any, ...]:
  """(parameters, optimizer state, step 0, *extra) as new device arrays: a step that donates its carry
  leaves the originals intact for the next repeat."""
  params = jax.tree.map(jnp.array, params)
  return (params, tx.init(params), jnp.zeros((), jnp.int32), *jax.tree.map(jnp.array, extra))


def gradient_case(setup: Setup, params: Any, loss: Callable[[Any, Any, jax.Array], jax.Array], jaxlab_loss: Any,
                  reference_loss: Any, seed: int) -> Case:
  """A Case whose step is one update of `setup.tx` on grad `loss(params, batch, key)`, with key fold_in(PRNGKey(seed),
  step) for the loss's own noise (dropout, a sample)."""
  key = jax.random.PRNGKey(seed)

  def step(carry, batch):
    params, opt_state, count = carry
    grads = jax.grad(loss)(params, batch, jax.random.fold_in(key, count))
    updates, opt_state = setup.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, count + 1

  return Case(jaxlab_loss=float(jaxlab_loss), reference_loss=float(reference_loss),
              init=lambda: fresh(params, setup.tx), step=jax.jit(step, donate_argnums=0), batches=setup.batches)
