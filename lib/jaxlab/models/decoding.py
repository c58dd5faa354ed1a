"""Text generation from a language model as one compiled program.

A model that can decode takes `decode=True` and keeps its per-sequence state (the GPT's keys and
values, an RNN's carries) in the 'cache' collection, one token per call. A GPT with a context of
`block_size` positions decodes from the cache up to that length; beyond it, each new token comes
from a full forward pass over the last `block_size` tokens (learned absolute positions cannot
slide a cache).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

CHUNK = 64  # positions per compiled call of `generate`: a stop waits for one chunk at most


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


def generate(model: nn.Module, params: Any, prompt: jax.Array, key: jax.Array, num_tokens: int,
             temperature: float = 1.0, top_k: int = 0, chunk: int = CHUNK,
             between_chunks: Callable[[int], None] | None = None) -> jax.Array:
  """The prompts (batch, P) followed by `num_tokens` generated tokens each; a function of `key` alone.

  Tokens come `chunk` positions per compiled call (one program for every chunk), and
  `between_chunks(positions done)` runs after each: a long generation can be stopped between them.
  """
  batch, prompt_length = prompt.shape
  total = prompt_length + num_tokens
  context = getattr(model, 'block_size', None) or total
  cached_length = min(total, context)
  tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_length].set(prompt)
  cache = _empty_cache(model, params, batch, cached_length)
  for start in range(0, total - 1, chunk):
    end = min(start + chunk, total - 1)
    tokens, cache = _advance(model, params, tokens, cache, key, jnp.int32(start), jnp.int32(end), prompt_length,
                             cached_length, temperature, top_k)
    if between_chunks is not None:
      between_chunks(end)
  return tokens


_empty_cache = jax.jit(empty_cache, static_argnums=(0, 2, 3))


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9, 10))
def _advance(model: nn.Module, params: Any, tokens: jax.Array, cache: Any, key: jax.Array, start: jax.Array,
             end: jax.Array, prompt_length: int, cached_length: int, temperature: float,
             top_k: int) -> tuple[jax.Array, Any]:
  """Positions start+1 .. end of `tokens` filled: from the cache up to `cached_length`, then each from a
  full pass over the window of the last `block_size` tokens."""
  total = tokens.shape[1]

  def write(tokens, position, logits):
    sampled = pick(logits, jax.random.fold_in(key, position), temperature, top_k)
    return tokens.at[:, position].set(jnp.where(position < prompt_length, tokens[:, position], sampled))

  def from_cache(t, carry):
    tokens, cache = carry
    logits, cache = decode_one(model, params, cache, tokens[:, t])
    return write(tokens, t + 1, logits), cache

  tokens, cache = jax.lax.fori_loop(start, jnp.minimum(end, cached_length), from_cache, (tokens, cache))
  if total - 1 > cached_length:  # beyond the context; only then, as a window of `context` must fit in `tokens`
    context = cached_length

    def from_window(t, tokens):
      window = jax.lax.dynamic_slice_in_dim(tokens, t + 1 - context, context, axis=1)
      return write(tokens, t + 1, model.apply({'params': params}, window)[:, -1])

    tokens = jax.lax.fori_loop(jnp.maximum(start, cached_length), end, from_window, tokens)
  return tokens, cache
