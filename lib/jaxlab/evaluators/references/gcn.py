"""A two-layer GCN (Kipf & Welling 2017) on an edge list in plain jax.numpy.

H' = Â H W with Â = D^-1/2 (A + I) D^-1/2 applied as per-edge weights and a segment sum per
receiving node; the first layer multiplies the sparse features (their nonzero entries) by its
kernel with another segment sum. Dropout on the feature entries and on the hidden units, no
biases; the loss is the mean cross-entropy over the split's nodes plus l2/2 * sum w^2 on the
kernels loss.penalty_paths names. Parameters are a dict of arrays; `from_jaxlab` renames jaxlab's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.evaluators.references import Case, common
from jaxlab.evaluators.references.layers import dropout, penalised, penalty


def logits(p: dict[str, jax.Array], graph: dict[str, jax.Array], rate: float,
           key: jax.Array | None = None) -> jax.Array:
  n = len(graph['y'])
  nodes = jnp.arange(n, dtype=graph['senders'].dtype)
  senders, receivers = jnp.concatenate([graph['senders'], nodes]), jnp.concatenate([graph['receivers'], nodes])
  scale = jax.lax.rsqrt(jax.ops.segment_sum(jnp.ones(receivers.shape, jnp.float32), receivers, n))  # (1 + degree)^-1/2
  weight = scale[senders] * scale[receivers]
  propagate = lambda h: jax.ops.segment_sum(weight[:, None] * h[senders], receivers, n)
  features, hidden = jax.random.split(key) if key is not None else (None, None)
  values = dropout(graph['feature_values'], rate, features)
  xw = jax.ops.segment_sum(values[:, None] * p['w0'][graph['feature_cols']], graph['feature_rows'], n)
  h = dropout(jax.nn.relu(propagate(xw)), rate, hidden)
  return propagate(h @ p['w1'])


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask) / jnp.sum(mask)


def loss(p: dict[str, jax.Array], batch: dict[str, jax.Array], rate: float, l2: float, marked: dict[str, Any],
         key: jax.Array | None = None) -> jax.Array:
  return masked_cross_entropy(logits(p, batch, rate, key), batch['y'], batch['mask']) + penalty(p, marked, 0.0, l2)


def from_jaxlab(params: dict[str, Any]) -> dict[str, Any]:
  """jaxlab's GCN parameters (models/graph.py names) in the reference's layout."""
  return {'w0': params['layer_0']['kernel'], 'w1': params['layer_1']['kernel']}


def case(config: ml_collections.ConfigDict, program: Any = None) -> Case:
  setup = common.setup(config, program)
  rate, l2 = setup.task.model.dropout, config.loss.l2  # the task refuses l1 and label smoothing
  jaxlab_marked = penalised(setup.params, config.loss.penalty_paths)
  marked, params = from_jaxlab(jaxlab_marked), from_jaxlab(setup.params)
  check = setup.first_batch
  jaxlab_loss = (masked_cross_entropy(setup.task.model.apply({'params': setup.params}, check, train=False),
                                      check['y'], check['mask'])
                 + penalty(setup.params, jaxlab_marked, 0.0, l2))
  return common.gradient_case(setup, params,
                             lambda p, batch, key: loss(p, batch, rate, l2, marked, key if rate else None),
                             jaxlab_loss, loss(params, check, rate, l2, marked), config.seed)
