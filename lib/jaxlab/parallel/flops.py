"""Model FLOPs of a training step and the peak FLOP/s of accelerators: model FLOPs utilisation (MFU).

FLOPs per token of a Transformer (Kaplan et al. 2020; PaLM, appendix B): 6·N + 12·L·T·d, with N
the parameters that take part in matmuls (all but the position table; a tied token embedding
counts once, as the output layer, as in nanoGPT's estimate), L layers, T the trained sequence
length and d the width. 6·N: forward and backward matmuls; 12·L·T·d: attention scores and their
use (causal masking not discounted, by the convention both papers and nanoGPT follow). A model
without attention (an RNN) counts 6·N.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

# Dense (no sparsity) peak FLOP/s per chip from the vendors' datasheets, matched against
# jax.Device.device_kind in this order. 'float32': XLA's default precision runs float32 matmuls
# as one bfloat16 pass on TPUs and as TF32 on these GPUs, so those are the peaks they can reach.
PEAK_FLOPS = (
    ('TPU v4', {'bfloat16': 275e12, 'float32': 275e12}),
    ('TPU v5 lite', {'bfloat16': 197e12, 'float32': 197e12}),  # v5e
    ('TPU v5', {'bfloat16': 459e12, 'float32': 459e12}),  # v5p
    ('TPU v6', {'bfloat16': 918e12, 'float32': 918e12}),  # v6e (Trillium)
    ('A100', {'bfloat16': 312e12, 'float32': 156e12}),
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
    ('H100', {'bfloat16': 989e12, 'float32': 494e12}),  # SXM
    ('H200', {'bfloat16': 989e12, 'float32': 494e12}),
)


def peak_per_device(device_kind: str, dtype: str) -> float | None:
  """The chip's peak FLOP/s for matmuls in `dtype`, or None for a chip not in the table (CPUs)."""
  for name, peaks in PEAK_FLOPS:
    if name in device_kind:
      return peaks.get(dtype)
  return None


def per_token(model: nn.Module, params: Any, seq_len: int) -> float:
  """Training FLOPs per token: 6·N + 12·L·T·d (attention only where the model has heads)."""
  sizes = {jax.tree_util.keystr(path): int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(params)}
  n = sum(size for path, size in sizes.items() if 'position_embedding' not in path)
  attention = 12 * model.num_layers * seq_len * model.width if hasattr(model, 'num_heads') else 0
  return 6 * n + attention
