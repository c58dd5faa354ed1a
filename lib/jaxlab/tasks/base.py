"""The interface between the shared training loop and the math of one learning setup.

The loop (train.py) owns devices, data feeding, checkpoints, evaluation schedule and logs. A
task owns only pure functions of the TrainState and a batch, which the loop jits with explicit
shardings:

* `init(rng, batch) -> TrainState`: from an example batch (shapes only matter).
* `train_step(state, batch) -> (state, metrics)`: one update; metrics are scalar batch means
  and must include 'loss' (the NaN guard reads it).
* `eval_step(state, batch) -> sums`: metric sums over the batch's real examples (batch['mask'])
  plus 'count'; the loop reports sum / count for every other key. Image and array sources also give
  batch['index'], each example's row in the split: a key for evaluation noise that no batching changes.

Optional, used by the loop for any task that has them:
* `summarize(sums) -> metrics`: evaluation sums to reported metrics (default metrics.summarize);
  e.g. perplexity = exp(mean loss), which no sum / count gives.
* `items_per_step`: {unit: count} processed per step; the logs get `<unit>_per_sec` (tokens/s).
* `showcase(state) -> {name: text or HWC uint8 image}`: written to <workdir>/samples/ and
  TensorBoard at each evaluation (generated text, reconstructions, samples).
* `sample_images(state, key, num) -> NHWC pixels in [0, 1]`: what `launch.py sample` draws for a
  generative run (`generate(params, ...)` for a language model).
* `param_axes(batch) -> tree of logical PartitionSpecs` over `params`: how the parameters may be
  sharded (jaxlab.parallel.sharding); without it every parameter is replicated.
* `gradients(state, batch) -> (grads, metrics, model_state)` and
  `apply_gradients(state, grads, model_state) -> state`: the two halves of `train_step`
  (`OneModel.train_step` joins them); with them `train.grad_accum_steps` works (jaxlab.run.accumulate).
* `curve_metrics`: training metrics drawn against steps at the end of a run, <workdir>/<metric>.png, the
  mean over replicas and the band from the lowest to the highest (jaxlab.observe.curves).
* `flops_per_step(params) -> float`: model FLOPs of one training step; the logs get TFLOP/s and MFU.

How other families fit the same loop:
* GAN (tasks/gan.py): one model holds both networks, so `params`, `opt_state` and the BatchNorm
  statistics are dicts {'generator': ..., 'discriminator': ...}; the task holds two optax
  transformations and `train_step` updates both, each with its own.
* RL: the data source yields empty batches; `train_step` runs the environment rollout and the
  update inside the one jitted function (the environment is pure JAX).
* Graphs (tasks/node_classification.py): a `full_batch` source yields the whole graph every step;
  batch['mask'] selects the split's nodes.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.core import meta

from jaxlab.parallel import sharding
from jaxlab.tasks.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


EVAL_KEY = 0  # evaluation example i draws its noise from fold_in(key(EVAL_KEY), i)


def example_keys(batch: Batch) -> jax.Array:
  """One key per example of an evaluation batch, from its row in the split (batch['index']): the same draws at
  every evaluation and under any batching."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(EVAL_KEY), i))(batch['index'])


class Task(Protocol):

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    ...

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    ...

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    ...


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, inputs: jax.Array) -> TrainState:
  """A fresh TrainState: the model's params and their optimizer state, its other collections (e.g.
  BatchNorm statistics) as model_state, and the run's RNG."""
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  # The logical axis names the model gives its parameters are read by param_axes; the state holds plain arrays.
  variables = meta.unbox(model.init({'params': params_rng, 'dropout': dropout_rng}, inputs, train=False))
  params = variables.pop('params')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    model_state=dict(variables), rng=state_rng)


def apply_update(state: TrainState, tx: optax.GradientTransformation, grads: Any, model_state: Any) -> TrainState:
  """One optimizer update of `state` with `grads`; the model's other collections replaced by `model_state`."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                       model_state=model_state)


class OneModel:
  """What a task around one `model` trained by one optax `tx` has in common; it adds `gradients`."""

  model: nn.Module
  tx: optax.GradientTransformation

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    return init_state(self.model, self.tx, rng, batch['x'])

  def param_axes(self, batch: Batch) -> Any:
    return sharding.param_axes(self.model, batch['x'])

  def apply_gradients(self, state: TrainState, grads: Any, model_state: Any) -> TrainState:
    return apply_update(state, self.tx, grads, model_state)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    grads, metrics, model_state = self.gradients(state, batch)
    return self.apply_gradients(state, grads, model_state), {**metrics, 'grad_norm': optax.tree.norm(grads)}
