"""The interface between the shared training loop and the math of one learning setup.

The loop (train.py) owns devices, data feeding, checkpoints, evaluation schedule and logs. A
task owns only pure functions of the TrainState and a batch, which the loop jits with explicit
shardings:

* `init(rng, batch) -> TrainState`: from an example batch (shapes only matter).
* `train_step(state, batch) -> (state, metrics)`: one update; metrics are scalar batch means
  and must include 'loss' (the NaN guard reads it).
* `eval_step(state, batch) -> sums`: metric sums over the batch's real examples (batch['mask'])
  plus 'count'; the loop reports sum / count for every other key.

How other families fit the same loop:
* GAN: `params` and `opt_state` are dicts {'generator': ..., 'discriminator': ...}; the task
  holds two optax transformations and `train_step` updates both.
* RL: the data source yields empty batches; `train_step` runs the environment rollout and the
  update inside the one jitted function (the environment is pure JAX).
* Graphs: the source yields the same full graph every step; masks select the split's nodes.
"""

from __future__ import annotations

from typing import Protocol

import jax

from jaxlab.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class Task(Protocol):

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    ...

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    ...

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    ...
