"""A decoder-only Transformer (GPT-2 style, nanoGPT's layout) in plain jax.numpy.

One (C, 3C) QKV matrix, attention written out as matmuls and a masked softmax, tanh or erf GELU,
pre-LayerNorm blocks, learned positions, tied or separate output embedding, optional biases and
dropout. Parameters are a dict of arrays; `from_jaxlab` renames jaxlab's GPT parameters into it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab.evaluators.references import Case, common
from jaxlab.evaluators.references.layers import dense, dropout, layer_norm


def logits(p: dict[str, Any], tokens: jax.Array, m: ml_collections.ConfigDict,
           key: jax.Array | None = None) -> jax.Array:
  batch, length = tokens.shape
  count = 3 * len(p['layers']) + 1  # dropout sites
  keys = list(jax.random.split(key, count)) if key is not None else [None] * count
  x = dropout(p['wte'][tokens] + p['wpe'][:length], m.dropout, keys.pop())
  width, heads = x.shape[-1], m.num_heads
  causal = jnp.tril(jnp.ones((length, length), bool))
  for layer in p['layers']:
    qkv = dense(layer_norm(x, layer['ln1']), layer['qkv'])
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * heads, width // heads), 3, axis=2)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(width // heads)
    weights = dropout(jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1), m.dropout, keys.pop())
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, width)
    x = x + dropout(dense(y, layer['out']), m.dropout, keys.pop())
    hidden = jax.nn.gelu(dense(layer_norm(x, layer['ln2']), layer['fc']), approximate=m.gelu_approximate)
    x = x + dropout(dense(hidden, layer['proj']), m.dropout, keys.pop())
  x = layer_norm(x, p['ln_f'])
  return x @ p['wte'].T if 'head' not in p else dense(x, p['head'])


def loss(p: dict[str, Any], batch: dict[str, jax.Array], m: ml_collections.ConfigDict,
         key: jax.Array | None = None) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits(p, batch['x'], m, key), batch['y']).mean()


def _dense_from(p: dict[str, Any], fan_in: int | None = None) -> dict[str, Any]:
  kernel = p['kernel'] if fan_in is None else p['kernel'].reshape(fan_in, -1)
  return {'w': kernel, **({'b': p['bias'].reshape(-1)} if 'bias' in p else {})}


def from_jaxlab(params: dict[str, Any]) -> dict[str, Any]:
  """jaxlab's GPT parameters (models/transformer.py names) in the reference's layout."""
  encoder = params['encoder']
  blocks = sorted((k for k in encoder if k.startswith('block_')), key=lambda k: int(k.split('_')[1]))
  width = params['position_embedding'].shape[1]
  layers = [{'ln1': encoder[b]['ln_1'], 'ln2': encoder[b]['ln_2'],
             'qkv': _dense_from(encoder[b]['attention']['qkv'], width),
             'out': _dense_from(encoder[b]['attention']['out'], width),
             'fc': _dense_from(encoder[b]['mlp_in']), 'proj': _dense_from(encoder[b]['mlp_out'])} for b in blocks]
  converted = {'wte': params['token_embedding']['embedding'], 'wpe': params['position_embedding'], 'layers': layers,
               'ln_f': encoder['ln_final']}
  if 'head' in params:
    converted['head'] = _dense_from(params['head'])
  return converted


def case(config: ml_collections.ConfigDict, program: Any = None) -> Case:
  m = config.model
  setup = common.setup(config, program)
  params = from_jaxlab(setup.params)
  check = setup.first_batch
  jaxlab_loss = optax.softmax_cross_entropy_with_integer_labels(
      setup.task.model.apply({'params': setup.params}, check['x'], train=False), check['y']).mean()
  return common.gradient_case(setup, params, lambda p, batch, key: loss(p, batch, m, key if m.dropout else None),
                             jaxlab_loss, loss(params, check, m), config.seed)
