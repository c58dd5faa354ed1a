"""BERT's masked language modelling: predict 15 % of the tokens from the rest, in both directions.

Of the chosen tokens 80 % become the mask token, 10 % a random token and 10 % stay as they are
(Devlin et al. 2019). Training masks come from (run rng, step), so a resumed run masks exactly
as an uninterrupted one; evaluation masks come from a fixed key and each window's offset, the
same for every run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.observe import metrics
from jaxlab.tasks.base import Batch, Metrics
from jaxlab.tasks.language_model import TokenTask, token_sums
from jaxlab.tasks.state import TrainState

MASK_FRACTION = 0.15
EVAL_MASK_KEY = 0x6D61736B  # 'mask'


def mask_tokens(key: jax.Array, tokens: jax.Array, vocab_size: int, mask_id: int) -> tuple[jax.Array, jax.Array]:
  """(inputs with BERT's 80/10/10 replacements, boolean positions to predict)."""
  choose, kind, replacement = jax.random.split(key, 3)
  chosen = jax.random.uniform(choose, tokens.shape) < MASK_FRACTION
  r = jax.random.uniform(kind, tokens.shape)
  random_tokens = jax.random.randint(replacement, tokens.shape, 0, vocab_size, tokens.dtype)
  inputs = jnp.where(chosen & (r < 0.8), mask_id, jnp.where(chosen & (r < 0.9), random_tokens, tokens))
  return inputs, chosen


@dataclasses.dataclass(frozen=True)
class MaskedLM(TokenTask):
  model: nn.Module  # its vocabulary holds one more id than the text's: the mask token
  tx: optax.GradientTransformation
  vocab_size: int  # of the text
  tokens_per_step: int
  block_size: int

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  def _loss(self, params: Any, state: TrainState, batch: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    inputs, chosen = mask_tokens(mask_key, batch['x'], self.vocab_size, self.mask_id)
    logits = self.model.apply({'params': params}, inputs, train=True, rngs={'dropout': dropout_key})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['x'])
    count = jnp.maximum(chosen.sum(), 1)
    hits = (jnp.argmax(logits, -1) == batch['x']) & chosen
    return jnp.sum(jnp.where(chosen, losses, 0.0)) / count, (hits.sum() / count, chosen.mean())

  def gradients(self, state: TrainState, batch: Batch) -> tuple[Any, Metrics, Any]:
    """Loss per masked token of this batch: micro-batches of grad_accum_steps weigh their means equally."""
    (loss, (accuracy, masked)), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, state, batch)
    return grads, {'loss': loss, 'accuracy': accuracy, 'masked_fraction': masked}, state.model_state

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(EVAL_MASK_KEY), batch['offset'])
    inputs, chosen = jax.vmap(mask_tokens, in_axes=(0, 0, None, None))(keys, batch['x'], self.vocab_size, self.mask_id)
    logits = self.model.apply({'params': state.params}, inputs, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['x'])
    return token_sums(losses, jnp.argmax(logits, -1) == batch['x'], chosen & (batch['mask'][:, None] > 0))

  def summarize(self, sums: dict[str, Any]) -> dict[str, np.ndarray]:
    """Means per masked token, and perplexity (exp of the mean loss)."""
    means = metrics.summarize(sums)
    means['perplexity'] = np.exp(means['loss'])
    means['bits_per_token'] = means['loss'] / math.log(2)
    return means
