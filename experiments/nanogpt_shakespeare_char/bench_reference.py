"""jaxlab's GPT training step against an independent plain-JAX GPT of the same shapes, one process.

  python experiments/nanogpt_shakespeare_char/bench_reference.py [--steps=200] [--repeats=3]

The reference below imports nothing from jaxlab's models or tasks: one (C, 3C) QKV matrix, attention
written out as matmuls and a masked softmax, tanh GELU, no biases, tied embeddings (nanoGPT's CPU
config: 4 layers, 4 heads, width 128, block 64, batch 12). jaxlab's parameters are converted into
it and both losses are compared on one batch before anything is timed. Both steps are the same
hand loop (jit, donated buffers, optax AdamW with gradient clipping: nanoGPT's optimizer settings),
so the ratio is the model's cost alone; `launch.py bench` times jaxlab's whole loop against that hand
loop. Repeats alternate the two. Also printed: each step's FLOPs (XLA's cost analysis) per second
against this machine's float32 matmul rate (a 1024^3 jnp.dot, median of 20).
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab import config as config_lib
from jaxlab import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def layer_norm(x, scale):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale


def reference_logits(p, tokens, num_heads):
  batch, length = tokens.shape
  x = p['wte'][tokens] + p['wpe'][:length]
  width = x.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  for layer in p['layers']:
    qkv = layer_norm(x, layer['ln1']) @ layer['w_qkv']
    q, k, v = jnp.split(qkv.reshape(batch, length, 3 * num_heads, width // num_heads), 3, axis=2)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(width // num_heads)
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, width)
    x = x + y @ layer['w_out']
    x = x + jax.nn.gelu(layer_norm(x, layer['ln2']) @ layer['w_fc'], approximate=True) @ layer['w_proj']
  return layer_norm(x, p['ln_f']) @ p['wte'].T


def to_reference(params):
  """jaxlab's GPT parameters (use_bias=False, tied embeddings) as the reference's."""
  encoder = params['encoder']
  blocks = sorted((k for k in encoder if k.startswith('block_')), key=lambda k: int(k.split('_')[1]))
  width = params['position_embedding'].shape[1]
  layers = [{'ln1': encoder[b]['ln_1']['scale'], 'ln2': encoder[b]['ln_2']['scale'],
             'w_qkv': encoder[b]['attention']['qkv']['kernel'].reshape(width, 3 * width),
             'w_out': encoder[b]['attention']['out']['kernel'].reshape(width, width),
             'w_fc': encoder[b]['mlp_in']['kernel'], 'w_proj': encoder[b]['mlp_out']['kernel']} for b in blocks]
  return {'wte': params['token_embedding']['embedding'], 'wpe': params['position_embedding'], 'layers': layers,
          'ln_f': encoder['ln_final']['scale']}


def loss_of(logits_fn):
  return lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()


def step_fn(loss, tx):
  def step(params, opt_state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value
  return jax.jit(step, donate_argnums=(0, 1))


def steps_per_sec(step, params, tx, batches, steps):
  params = jax.tree.map(jnp.array, params)  # a fresh copy: the step donates its buffers
  opt_state = tx.init(params)
  for i, (x, y) in enumerate(batches[:20]):  # warm-up, compilation included
    params, opt_state, _ = step(params, opt_state, x, y)
  jax.block_until_ready(params)
  start = time.perf_counter()
  for i in range(steps):
    x, y = batches[i % len(batches)]
    params, opt_state, _ = step(params, opt_state, x, y)
  jax.block_until_ready(params)
  return steps / (time.perf_counter() - start)


def matmul_flops_per_sec(n=1024, repeats=20):
  a = jnp.ones((n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  config = config_lib.load(os.path.join(ROOT, 'configs', 'shakespeare_char', 'gpt.py'))
  vocab, block, batch, heads = 65, config.data.block_size, config.data.batch_size, config.model.num_heads
  model = models.create(config.model, vocab)
  rng = np.random.default_rng(0)
  batches = [(rng.integers(0, vocab, (batch, block)).astype(np.int32),
              rng.integers(0, vocab, (batch, block)).astype(np.int32)) for _ in range(50)]
  params = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(0), batches[0][0][:1])['params'])
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params, is_leaf=lambda x: hasattr(x, 'value'))
  jaxlab_loss = loss_of(lambda p, x: model.apply({'params': p}, x))
  reference_loss = loss_of(lambda p, x: reference_logits(p, x, heads))
  reference_params = to_reference(params)
  a, b = float(jaxlab_loss(params, *batches[0])), float(reference_loss(reference_params, *batches[0]))
  print(f'loss on one batch from the same parameters: jaxlab {a:.7f}, reference {b:.7f}, |diff| {abs(a - b):.2e}')
  assert abs(a - b) < 1e-5, 'the reference does not compute the same function'

  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.99, weight_decay=0.1))
  steps = {'jaxlab': step_fn(jaxlab_loss, tx), 'reference': step_fn(reference_loss, tx)}
  inputs = {'jaxlab': params, 'reference': reference_params}
  flops = {name: steps[name].lower(jax.tree.map(jnp.asarray, inputs[name]), tx.init(inputs[name]),
                                   *batches[0]).compile().cost_analysis() for name in steps}
  flops = {name: (f[0] if isinstance(f, list) else f)['flops'] for name, f in flops.items()}
  peak = matmul_flops_per_sec()
  print(f'{jax.devices()[0].platform}: float32 matmul (1024^3) {peak / 1e9:.1f} GFLOP/s; '
        f'{args.repeats} repeats of {args.steps} steps, batch {batch} x {block}')
  rates = {name: [] for name in steps}
  for r in range(args.repeats):
    for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
      rates[name].append(steps_per_sec(steps[name], inputs[name], tx, batches, args.steps))
    print(f'  repeat {r + 1}: ' + ', '.join(f'{n} {v[-1]:.2f} steps/s' for n, v in rates.items()), flush=True)
  median = {name: statistics.median(v) for name, v in rates.items()}
  for name in steps:
    achieved = flops[name] * median[name]
    print(f'{name:9s} {1e3 / median[name]:6.1f} ms/step | {flops[name] / 1e9:.3f} GFLOP/step | '
          f'{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the matmul rate')
  print(f'jaxlab time / reference time = {median["reference"] / median["jaxlab"]:.3f}')


if __name__ == '__main__':
  main()
