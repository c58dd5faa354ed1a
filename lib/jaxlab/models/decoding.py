"""Text generation from a language model as one compiled program.

A model that can decode takes `decode=True` and keeps its per-sequence state (the GPT's keys and
values, an RNN's carries) in the 'cache' collection, one token per call. A GPT with a context of
`block_size` positions decodes from the cache up to that length; beyond it, each new token comes
from a full forward pass over the last `block_size` tokens (learned absolute positions cannot
slide a cache).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def empty_cache(model: nn.Module, params: Any, batch_size: int, length: int) -> Any:
  """The decoding state for `batch_size` sequences of up to `length` tokens, before the first token."""
  tokens = jnp.zeros((batch_size, length), jnp.int32)
  return model.apply({'params': params}, tokens, decode=True, mutable=['cache'])[1]['cache']


def decode_one(model: nn.Module, params: Any, cache: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
  """Logits (batch, vocab) after one more token per sequence (tokens: (batch,)), and the new cache."""
  logits, mutated = model.apply({'params': params, 'cache': cache}, tokens[:, None], decode=True, mutable=['cache'])
  return logits[:, -1], mutated['cache']


def pick(logits: jax.Array, key: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Next tokens from (batch, vocab) logits: greedy at temperature 0, else sampled from the top k."""
  if temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'temperature', 'top_k'))
def generate(model: nn.Module, params: Any, prompt: jax.Array, key: jax.Array, num_tokens: int,
             temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """The prompts (batch, P) followed by `num_tokens` generated tokens each; a function of `key`."""
  batch, prompt_length = prompt.shape
  total = prompt_length + num_tokens
  context = getattr(model, 'block_size', None) or total
  cached_length = min(total, context)
  tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_length].set(prompt)

  def write(tokens, position, logits):
    sampled = pick(logits, jax.random.fold_in(key, position), temperature, top_k)
    return tokens.at[:, position].set(jnp.where(position < prompt_length, tokens[:, position], sampled))

  def from_cache(t, carry):
    tokens, cache = carry
    logits, cache = decode_one(model, params, cache, tokens[:, t])
    return write(tokens, t + 1, logits), cache

  def from_window(t, tokens):
    window = jax.lax.dynamic_slice_in_dim(tokens, t + 1 - context, context, axis=1)
    return write(tokens, t + 1, model.apply({'params': params}, window)[:, -1])

  cache = empty_cache(model, params, batch, cached_length)
  tokens, _ = jax.lax.fori_loop(0, min(total - 1, cached_length), from_cache, (tokens, cache))
  if total - 1 > cached_length:  # beyond the context; only then, as a window of `context` must fit in `tokens`
    tokens = jax.lax.fori_loop(cached_length, total - 1, from_window, tokens)
  return tokens
