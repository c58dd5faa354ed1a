"""Transformers: one pre-LayerNorm block shared by a GPT decoder, a BERT encoder and a ViT.

Attention goes through `jax.nn.dot_product_attention`, which picks the fused (cuDNN) kernel on
GPUs. Weights start as in GPT-2/nanoGPT: N(0, 0.02), the projections into the residual stream
scaled by 1/sqrt(2 * num_layers).

Parameters name their dimensions (`embed`, `heads`, `kv`, `mlp`, `vocab`, `position`, `classes`)
for sharding (jaxlab.parallel.sharding). `dtype` is the compute type (bfloat16: mixed precision; attention
logits, softmax and the returned logits stay float32), `param_dtype` the stored one. `remat`
recomputes each block's activations in the backward pass: 'full', or keep the matmul outputs
('dots', 'dots_no_batch'), trading compute for memory.

Decoding (`decode=True`) feeds one token per call and keeps keys and values in the 'cache'
collection: create it by calling the model with decode=True on a (batch, max_length) array and
`mutable=['cache']` (jaxlab.models.decoding does this).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError
from jaxlab.models import checks

POOLS = ('cls', 'mean')
DTYPES = ('float32', 'bfloat16', 'float16')
REMAT_POLICIES = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
                  'dots': jax.checkpoint_policies.checkpoint_dots,
                  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
normal = nn.initializers.normal(0.02)
zeros = nn.initializers.zeros


def named(init: nn.initializers.Initializer, *names: str | None) -> nn.initializers.Initializer:
  """`init` whose parameter carries logical dimension names for the sharding rules."""
  return nn.with_logical_partitioning(init, names)


def _check(module: nn.Module) -> None:
  """The attributes every transformer shares."""
  checks.positive(width=module.width, num_heads=module.num_heads, num_layers=module.num_layers)
  checks.rate(dropout=module.dropout)
  if module.width % module.num_heads:
    raise ValueError(f'width {module.width} is not divisible by num_heads {module.num_heads}')
  checks.one_of('dtype', module.dtype, DTYPES)
  checks.one_of('param_dtype', module.param_dtype, DTYPES)
  checks.one_of('remat', module.remat, REMAT_POLICIES)


def _types(module: nn.Module) -> dict[str, jnp.dtype]:
  """The compute and parameter dtypes, from the config's strings."""
  return {'dtype': jnp.dtype(module.dtype), 'param_dtype': jnp.dtype(module.param_dtype)}


class Attention(nn.Module):
  num_heads: int
  causal: bool
  use_bias: bool
  out_init: nn.initializers.Initializer
  types: dict

  @nn.compact
  def __call__(self, x: jax.Array, position: jax.Array | None = None) -> jax.Array:
    """`position`: decoding one token at this position, with keys and values cached in 'cache'."""
    width = x.shape[-1]
    qkv = nn.DenseGeneral((3, self.num_heads, width // self.num_heads), use_bias=self.use_bias,
                          kernel_init=named(normal, 'embed', None, 'heads', 'kv'),
                          bias_init=named(zeros, None, 'heads', 'kv'), name='qkv', **self.types)(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if position is not None:
      k, v, mask = self._cached(k, v, position)
      y = jax.nn.dot_product_attention(q, k, v, mask=mask)
    else:
      y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias,
                           kernel_init=named(self.out_init, 'heads', 'kv', 'embed'), bias_init=named(zeros, 'embed'),
                           name='out', **self.types)(y)

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
  types: dict = dataclasses.field(default_factory=dict)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, position: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    out_init = nn.initializers.normal(0.02 / (2 * self.num_layers) ** 0.5)
    norm = lambda name: layer_norm(self.use_bias, self.types, name)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = Attention(self.num_heads, self.causal, self.use_bias, out_init, self.types, name='attention')(
        norm('ln_1')(x), position)
    x = x + drop(y)
    y = nn.Dense(self.mlp_ratio * width, use_bias=self.use_bias, kernel_init=named(normal, 'embed', 'mlp'),
                 bias_init=named(zeros, 'mlp'), name='mlp_in', **self.types)(norm('ln_2')(x))
    y = nn.gelu(y, approximate=self.gelu_approximate)
    y = nn.Dense(width, use_bias=self.use_bias, kernel_init=named(out_init, 'mlp', 'embed'),
                 bias_init=named(zeros, 'embed'), name='mlp_out', **self.types)(y)
    return x + drop(y)


def layer_norm(use_bias: bool, types: dict, name: str) -> nn.LayerNorm:
  """LayerNorm (statistics in float32 whatever the compute dtype: flax upcasts)."""
  return nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, scale_init=named(nn.initializers.ones, 'embed'),
                      bias_init=named(zeros, 'embed'), name=name, **types)


class Encoder(nn.Module):
  """`num_layers` blocks and a final LayerNorm over (batch, length, width) activations."""

  num_layers: int
  num_heads: int
  causal: bool
  dropout: float
  use_bias: bool
  gelu_approximate: bool
  types: dict
  remat: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, position: jax.Array | None = None) -> jax.Array:
    block = Block
    if self.remat != 'none':  # `train` (argument 2, counting self) decides dropout: static
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], static_argnums=(2,))
    for i in range(self.num_layers):
      x = block(self.num_heads, self.num_layers, self.causal, self.dropout, self.use_bias,
                gelu_approximate=self.gelu_approximate, types=self.types, name=f'block_{i}')(x, train, position)
    return layer_norm(self.use_bias, self.types, 'ln_final')(x)


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
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'

  def validate(self) -> None:
    _check(self)
    checks.positive(block_size=self.block_size)

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False) -> jax.Array:
    if tokens.shape[1] > self.block_size:
      raise ConfigError(f'GPT: {tokens.shape[1]} tokens exceed the model.block_size of {self.block_size}')
    types = _types(self)
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=named(normal, 'vocab', 'embed'),
                     name='token_embedding', **types)
    positions = self.param('position_embedding', named(normal, 'position', 'embed'), (self.block_size, self.width),
                           types['param_dtype'])
    position, stepping = None, False
    if decode:  # one counter for the whole model: every layer's cache writes at this position
      stepping = self.has_variable('cache', 'position')  # False on the call that creates the cache
      counter = self.variable('cache', 'position', lambda: jnp.zeros((), jnp.int32))
      position = counter.value
      if stepping:
        counter.value = position + 1
    positions = jax.lax.dynamic_slice_in_dim(positions, position, 1) if stepping else positions[:tokens.shape[1]]
    x = nn.Dropout(self.dropout, deterministic=not train)(embed(tokens) + positions.astype(types['dtype']))
    x = Encoder(self.num_layers, self.num_heads, True, self.dropout, self.use_bias, self.gelu_approximate, types,
                self.remat, name='encoder')(x, train, position)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, kernel_init=named(normal, 'embed', 'vocab'), name='head',
                        **types)(x)
    return logits.astype(jnp.float32)  # the loss in float32


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
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'

  def validate(self) -> None:
    _check(self)
    checks.positive(block_size=self.block_size)

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    types = _types(self)
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=named(normal, 'vocab', 'embed'),
                     name='token_embedding', **types)
    positions = self.param('position_embedding', named(normal, 'position', 'embed'), (self.block_size, self.width),
                           types['param_dtype'])
    x = embed(tokens) + positions[:tokens.shape[1]].astype(types['dtype'])
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = Encoder(self.num_layers, self.num_heads, False, self.dropout, self.use_bias, self.gelu_approximate, types,
                self.remat, name='encoder')(x, train)
    x = nn.Dense(self.width, kernel_init=named(normal, 'embed', None), bias_init=named(zeros, None), name='mlm_dense',
                 **types)(x)
    x = layer_norm(True, types, 'mlm_ln')(nn.gelu(x, approximate=self.gelu_approximate))
    bias = self.param('mlm_bias', named(zeros, 'vocab'), (self.vocab_size,), types['param_dtype'])
    return embed.attend(x).astype(jnp.float32) + bias


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
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'

  def validate(self) -> None:
    _check(self)
    checks.positive(patch_size=self.patch_size)
    checks.one_of('pool', self.pool, POOLS)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim == 3:
      images = images[..., None]
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ConfigError(f'ViT: images of {images.shape[1]}x{images.shape[2]} do not split into {p}x{p} patches')
    types = _types(self)
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding='VALID', name='patch_embedding',
                kernel_init=named(nn.initializers.lecun_normal(), None, None, None, 'embed'),
                bias_init=named(zeros, 'embed'), **types)(images)
    x = x.reshape(x.shape[0], -1, self.width)
    if self.pool == 'cls':
      cls = self.param('cls_token', named(zeros, None, None, 'embed'), (1, 1, self.width), types['param_dtype'])
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x], axis=1)
    positions = self.param('position_embedding', named(normal, 'position', 'embed'), x.shape[1:], types['param_dtype'])
    x = nn.Dropout(self.dropout, deterministic=not train)(x + positions.astype(x.dtype))
    x = Encoder(self.num_layers, self.num_heads, False, self.dropout, self.use_bias, self.gelu_approximate, types,
                self.remat, name='encoder')(x, train)
    x = x[:, 0] if self.pool == 'cls' else x.mean(axis=1)
    head = nn.Dense(self.num_classes, kernel_init=named(zeros, 'embed', 'classes'), bias_init=named(zeros, 'classes'),
                    name='head', **types)
    return head(x).astype(jnp.float32)
