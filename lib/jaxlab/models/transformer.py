"""Transformers: one pre-LayerNorm block shared by a GPT decoder, a BERT encoder and a ViT.

Attention goes through `jax.nn.dot_product_attention`, which picks the fused (cuDNN) kernel on
GPUs. Weights start as in GPT-2/nanoGPT: N(0, 0.02), the projections into the residual stream
scaled by 1/sqrt(2 * num_layers).

Decoding (`decode=True`) feeds one token per call and keeps keys and values in the 'cache'
collection: create it by calling the model with decode=True on a (batch, max_length) array and
`mutable=['cache']` (jaxlab.decoding does this).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError
from jaxlab.models import checks

POOLS = ('cls', 'mean')
normal = nn.initializers.normal(0.02)


def _check_shape(width: int, num_heads: int, num_layers: int, dropout: float) -> None:
  checks.positive(width=width, num_heads=num_heads, num_layers=num_layers)
  checks.rate(dropout=dropout)
  if width % num_heads:
    raise ValueError(f'width {width} is not divisible by num_heads {num_heads}')


class Attention(nn.Module):
  num_heads: int
  causal: bool
  use_bias: bool
  out_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, x: jax.Array, position: jax.Array | None = None) -> jax.Array:
    """`position`: decoding one token at this position, with keys and values cached in 'cache'."""
    width = x.shape[-1]
    qkv = nn.DenseGeneral((3, self.num_heads, width // self.num_heads), use_bias=self.use_bias, kernel_init=normal,
                          name='qkv')(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if position is not None:
      k, v, mask = self._cached(k, v, position)
      y = jax.nn.dot_product_attention(q, k, v, mask=mask)
    else:
      y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias, kernel_init=self.out_init, name='out')(y)

  def _cached(self, k: jax.Array, v: jax.Array, position: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keys and values of every position so far; the new one written at `position`."""
    ready = self.has_variable('cache', 'key')
    batch, length, heads, dim = k.shape  # at creation `length` is the cache's: the longest sequence to decode
    keys = self.variable('cache', 'key', jnp.zeros, (batch, length, heads, dim), k.dtype)
    values = self.variable('cache', 'value', jnp.zeros, (batch, length, heads, dim), v.dtype)
    if not ready:  # the call that creates the cache computes nothing that is used
      return k, v, jnp.ones((1, 1, length, length), bool)
    keys.value = jax.lax.dynamic_update_slice(keys.value, k, (0, position, 0, 0))
    values.value = jax.lax.dynamic_update_slice(values.value, v, (0, position, 0, 0))
    mask = jnp.arange(keys.value.shape[1]) <= position
    return keys.value, values.value, mask[None, None, None, :]


class Block(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)); dropout on both residual branches."""

  num_heads: int
  num_layers: int  # of the whole stack, for the residual-projection init
  causal: bool
  dropout: float = 0.0
  use_bias: bool = True
  mlp_ratio: int = 4
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, position: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    out_init = nn.initializers.normal(0.02 / (2 * self.num_layers) ** 0.5)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, name=name)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = Attention(self.num_heads, self.causal, self.use_bias, out_init, name='attention')(norm('ln_1')(x), position)
    x = x + drop(y)
    y = nn.Dense(self.mlp_ratio * width, use_bias=self.use_bias, kernel_init=normal, name='mlp_in')(norm('ln_2')(x))
    y = nn.gelu(y, approximate=self.gelu_approximate)
    y = nn.Dense(width, use_bias=self.use_bias, kernel_init=out_init, name='mlp_out')(y)
    return x + drop(y)


class Encoder(nn.Module):
  """`num_layers` blocks and a final LayerNorm over (batch, length, width) activations."""

  num_layers: int
  num_heads: int
  causal: bool
  dropout: float
  use_bias: bool
  gelu_approximate: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, position: jax.Array | None = None) -> jax.Array:
    for i in range(self.num_layers):
      x = Block(self.num_heads, self.num_layers, self.causal, self.dropout, self.use_bias,
                gelu_approximate=self.gelu_approximate, name=f'block_{i}')(x, train, position)
    return nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, name='ln_final')(x)


class GPT(nn.Module):
  """A causal language model: token + learned position embeddings, blocks, logits over the vocabulary."""

  vocab_size: int
  block_size: int = 64  # the longest context, the size of the position table
  num_layers: int = 4
  num_heads: int = 4
  width: int = 128
  dropout: float = 0.0
  use_bias: bool = True
  tie_embeddings: bool = True
  gelu_approximate: bool = True  # tanh GELU; False: exact erf (as torch's nn.GELU), slower on CPU

  def validate(self) -> None:
    _check_shape(self.width, self.num_heads, self.num_layers, self.dropout)
    checks.positive(block_size=self.block_size)

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False) -> jax.Array:
    if tokens.shape[1] > self.block_size:
      raise ConfigError(f'GPT: {tokens.shape[1]} tokens exceed the model.block_size of {self.block_size}')
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=normal, name='token_embedding')
    positions = self.param('position_embedding', normal, (self.block_size, self.width))
    position, stepping = None, False
    if decode:  # one counter for the whole model: every layer's cache writes at this position
      stepping = self.has_variable('cache', 'position')  # False on the call that creates the cache
      counter = self.variable('cache', 'position', lambda: jnp.zeros((), jnp.int32))
      position = counter.value
      if stepping:
        counter.value = position + 1
    positions = jax.lax.dynamic_slice_in_dim(positions, position, 1) if stepping else positions[:tokens.shape[1]]
    x = nn.Dropout(self.dropout, deterministic=not train)(embed(tokens) + positions)
    x = Encoder(self.num_layers, self.num_heads, True, self.dropout, self.use_bias, self.gelu_approximate,
                name='encoder')(x, train, position)
    if self.tie_embeddings:
      return embed.attend(x)
    return nn.Dense(self.vocab_size, use_bias=False, kernel_init=normal, name='head')(x)


class BERT(nn.Module):
  """A bidirectional encoder with a masked-LM head (dense, GELU, LayerNorm, tied output + bias)."""

  vocab_size: int
  block_size: int = 64
  num_layers: int = 4
  num_heads: int = 4
  width: int = 128
  dropout: float = 0.1
  use_bias: bool = True
  gelu_approximate: bool = True

  def validate(self) -> None:
    _check_shape(self.width, self.num_heads, self.num_layers, self.dropout)
    checks.positive(block_size=self.block_size)

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=normal, name='token_embedding')
    positions = self.param('position_embedding', normal, (self.block_size, self.width))
    x = nn.Dropout(self.dropout, deterministic=not train)(embed(tokens) + positions[:tokens.shape[1]])
    x = Encoder(self.num_layers, self.num_heads, False, self.dropout, self.use_bias, self.gelu_approximate,
                name='encoder')(x, train)
    x = nn.gelu(nn.Dense(self.width, kernel_init=normal, name='mlm_dense')(x), approximate=self.gelu_approximate)
    x = nn.LayerNorm(epsilon=1e-5, name='mlm_ln')(x)
    return embed.attend(x) + self.param('mlm_bias', nn.initializers.zeros, (self.vocab_size,))


class ViT(nn.Module):
  """Vision Transformer: non-overlapping patches, learned positions, a class token or mean pooling."""

  num_classes: int
  patch_size: int = 4
  num_layers: int = 4
  num_heads: int = 4
  width: int = 128
  dropout: float = 0.0
  pool: str = 'cls'
  use_bias: bool = True
  gelu_approximate: bool = True

  def validate(self) -> None:
    _check_shape(self.width, self.num_heads, self.num_layers, self.dropout)
    checks.positive(patch_size=self.patch_size)
    checks.one_of('pool', self.pool, POOLS)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim == 3:
      images = images[..., None]
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ConfigError(f'ViT: images of {images.shape[1]}x{images.shape[2]} do not split into {p}x{p} patches')
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding='VALID', name='patch_embedding')(images)
    x = x.reshape(x.shape[0], -1, self.width)
    if self.pool == 'cls':
      cls = self.param('cls_token', nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
    x = x + self.param('position_embedding', normal, x.shape[1:])
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Encoder(self.num_layers, self.num_heads, False, self.dropout, self.use_bias, self.gelu_approximate,
                name='encoder')(x, train)
    x = x[:, 0] if self.pool == 'cls' else x.mean(axis=1)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(x)
