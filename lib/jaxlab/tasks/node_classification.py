"""Node classification on one graph, full-batch: the loss over the training nodes, metrics per split's nodes.

Every batch is the whole graph (data/planetoid.py); batch['mask'] marks the nodes of the split
(train in training, validation or test in evaluation), so each step sees every node's features
and edges but learns only from the labelled ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.parallel import sharding
from jaxlab.tasks.base import Batch, Metrics, OneModel, init_state
from jaxlab.tasks.classification import eval_sums, weight_penalty
from jaxlab.tasks.state import TrainState

GRAPH_KEYS = ('feature_rows', 'feature_cols', 'feature_values', 'senders', 'receivers', 'y')


def graph_of(batch: Batch) -> Batch:
  """What the model reads: the graph without the split mask (the labels' length is the node count)."""
  return {k: batch[k] for k in GRAPH_KEYS}


@dataclasses.dataclass(frozen=True)
class NodeClassification(OneModel):
  model: nn.Module
  tx: optax.GradientTransformation
  num_classes: int
  l2: float = 0.0
  penalty_paths: str = ''

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    return init_state(self.model, self.tx, rng, graph_of(batch))

  def param_axes(self, batch: Batch) -> Any:
    return sharding.param_axes(self.model, graph_of(batch))

  def _loss(self, params, state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)  # the same dropout on resume
    logits = self.model.apply({'params': params}, graph_of(batch), train=True, rngs={'dropout': rng})
    mask = batch['mask']
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
    loss = jnp.sum(losses * mask) / jnp.sum(mask) + weight_penalty(params, 0.0, self.l2, self.penalty_paths)
    return loss, logits

  def gradients(self, state: TrainState, batch: Batch) -> tuple[Any, Metrics, Any]:
    (loss, logits), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, state, batch)
    hits = (jnp.argmax(logits, -1) == batch['y']) * batch['mask']
    return grads, {'loss': loss, 'accuracy': jnp.sum(hits) / jnp.sum(batch['mask'])}, state.model_state

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    logits = self.model.apply({'params': state.params}, graph_of(batch), train=False)
    return eval_sums(logits, batch['y'], batch['mask'] > 0, self.num_classes)
