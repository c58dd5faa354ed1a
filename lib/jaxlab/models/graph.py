"""Graph neural networks on edge lists: GCN (Kipf & Welling 2017) and GAT (Veličković et al. 2018).

A model takes the batch of a graph source (data/planetoid.py): node features as nonzero entries
(`feature_rows`, `feature_cols`, `feature_values`), edges as (`senders`, `receivers`) in both
directions, and `y` (its length is the node count). Messages are gathered along the edges and
summed per receiver with `jax.ops.segment_sum`; every node also receives from itself.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Graph = dict[str, jax.Array]


def with_self_loops(senders: jax.Array, receivers: jax.Array, num_nodes: int) -> tuple[jax.Array, jax.Array]:
  nodes = jnp.arange(num_nodes, dtype=senders.dtype)
  return jnp.concatenate([senders, nodes]), jnp.concatenate([receivers, nodes])


def segment_softmax(logits: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
  """Softmax of `logits` (edges, ...) over the entries that share a segment (a receiving node)."""
  top = jax.ops.segment_max(logits, segments, num_segments)
  exp = jnp.exp(logits - jax.lax.stop_gradient(top)[segments])
  return exp / jax.ops.segment_sum(exp, segments, num_segments)[segments]


def gcn_norm(senders: jax.Array, receivers: jax.Array, num_nodes: int) -> jax.Array:
  """Edge weights of D^-1/2 (A + I) D^-1/2 for edges that already include the self-loops."""
  degree = jax.ops.segment_sum(jnp.ones_like(receivers, jnp.float32), receivers, num_nodes)
  scale = jax.lax.rsqrt(degree)
  return scale[senders] * scale[receivers]


def sparse_dropout(rng: jax.Array, values: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout on the nonzero feature entries only."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, values.shape)
  return jnp.where(keep, values / (1.0 - rate), 0.0)


class SparseInput(nn.Module):
  """features @ kernel for features given as nonzero entries, with dropout on those entries."""

  num_features: int
  width: int
  dropout: float
  use_bias: bool = False

  @nn.compact
  def __call__(self, graph: Graph, train: bool) -> jax.Array:
    values = graph['feature_values']
    if train and self.dropout > 0:
      values = sparse_dropout(self.make_rng('dropout'), values, self.dropout)
    kernel = self.param('kernel', nn.initializers.glorot_uniform(), (self.num_features, self.width))
    rows = jax.ops.segment_sum(values[:, None] * kernel[graph['feature_cols']], graph['feature_rows'],
                               len(graph['y']))
    return rows + self.param('bias', nn.initializers.zeros, (self.width,)) if self.use_bias else rows


def dense_propagation(senders: jax.Array, receivers: jax.Array, weight: jax.Array, num_nodes: int) -> jax.Array:
  """The (nodes, nodes) matrix of the weighted edges: the alternative to segment sums, for `launch.py bench`."""
  return jnp.zeros((num_nodes, num_nodes), weight.dtype).at[receivers, senders].add(weight)


class GCN(nn.Module):
  """Two graph convolutions, H' = Â H W with Â = D^-1/2 (A+I) D^-1/2: ReLU and dropout between, no biases (as Kipf's code).

  `propagation`: 'edges' (gather along the edges, segment_sum per receiver) or 'dense' (Â as a
  matrix); edges measured faster on Cora (experiments/planetoid_cora).
  """

  num_classes: int
  num_features: int
  hidden: int = 16
  dropout: float = 0.5
  propagation: str = 'edges'

  def validate(self) -> None:
    if self.propagation not in ('edges', 'dense'):
      raise ValueError(f"propagation must be 'edges' or 'dense', got {self.propagation!r}")

  @nn.compact
  def __call__(self, graph: Graph, train: bool = False) -> jax.Array:
    n = len(graph['y'])
    senders, receivers = with_self_loops(graph['senders'], graph['receivers'], n)
    weight = gcn_norm(senders, receivers, n)
    if self.propagation == 'dense':
      propagate = functools.partial(jnp.matmul, dense_propagation(senders, receivers, weight, n))
    else:
      propagate = lambda h: jax.ops.segment_sum(weight[:, None] * h[senders], receivers, n)
    h = nn.relu(propagate(SparseInput(self.num_features, self.hidden, self.dropout, name='layer_0')(graph, train)))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    kernel = nn.Dense(self.num_classes, use_bias=False, kernel_init=nn.initializers.glorot_uniform(), name='layer_1')
    return propagate(kernel(h))


class GraphAttention(nn.Module):
  """One GAT layer on already projected node features `h` (nodes, heads, width): attention over each
  node's neighbours and itself, LeakyReLU(0.2) scores; dropout on the coefficients and, as in the
  paper's code, on the features they average."""

  dropout: float

  @nn.compact
  def __call__(self, h: jax.Array, senders: jax.Array, receivers: jax.Array, train: bool) -> jax.Array:
    heads, width = h.shape[1:]
    # Per head a width -> 1 projection (the paper code's 1x1 convolutions), with its own Glorot fan.
    init = nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
    score = lambda name: nn.Einsum((heads, width, 1), 'nhw,hwo->nho', use_bias=False, kernel_init=init,
                                   name=name)(h)[..., 0]
    logits = nn.leaky_relu(score('attend_sender')[senders] + score('attend_receiver')[receivers], 0.2)
    alpha = segment_softmax(logits, receivers, len(h))  # (edges, heads)
    dropout = nn.Dropout(self.dropout, deterministic=not train)
    out = jax.ops.segment_sum(dropout(alpha)[:, :, None] * dropout(h)[senders], receivers, len(h))
    return out + self.param('bias', nn.initializers.zeros, (heads, width))


class GAT(nn.Module):
  """8 heads x 8 features, ELU, then one attention head to the classes; dropout on every layer's input."""

  num_classes: int
  num_features: int
  heads: int = 8
  hidden: int = 8
  output_heads: int = 1
  dropout: float = 0.6

  @nn.compact
  def __call__(self, graph: Graph, train: bool = False) -> jax.Array:
    n = len(graph['y'])
    senders, receivers = with_self_loops(graph['senders'], graph['receivers'], n)
    h = SparseInput(self.num_features, self.heads * self.hidden, self.dropout, name='project_0')(graph, train)
    h = GraphAttention(self.dropout, name='attention_0')(h.reshape(n, self.heads, self.hidden), senders, receivers,
                                                         train)
    h = nn.elu(h.reshape(n, -1))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Dense(self.output_heads * self.num_classes, use_bias=False, kernel_init=nn.initializers.glorot_uniform(),
                 name='project_1')(h)
    h = GraphAttention(self.dropout, name='attention_1')(h.reshape(n, self.output_heads, self.num_classes), senders,
                                                         receivers, train)
    return h.mean(1)  # the output heads are averaged

