"""Is input the bottleneck? The pipeline's examples/s beside the training step's consumption.

  python -m jaxlab.evaluators.bench_pipeline configs/mnist/lenet5.py [steps] [key=value ...]
"""

from __future__ import annotations

import itertools
import sys
import time

import jax
import ml_collections

from jaxlab import config as config_lib
from jaxlab import data, tasks


def pipeline_examples_per_sec(source, steps: int, start_step: int = 0) -> float:
  """Host batches/s of `source.train_batches` (after the first, which pays for thread start-up) x batch size."""
  batches = source.train_batches(start_step)
  first = next(batches)
  began = time.perf_counter()
  for _ in itertools.islice(batches, steps):
    pass
  return steps * len(first['y']) / (time.perf_counter() - began)


def step_examples_per_sec(config: ml_collections.ConfigDict, source, steps: int) -> float:
  """Examples/s the jitted train step consumes when its input is already in memory (one fixed batch)."""
  task = tasks.make(config, source)
  batch = next(source.train_batches(0))
  state = jax.jit(task.init)(jax.random.PRNGKey(0), source.example_batch())
  step = jax.jit(task.train_step, donate_argnums=0)
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  began = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  return steps * len(batch['y']) / (time.perf_counter() - began)


def main(argv: list[str]) -> dict[str, float]:
  config = config_lib.load(argv[0], argv[2:])
  steps = int(argv[1]) if len(argv) > 1 else 200
  source = data.make_source(config.data, config.seed)
  result = {'pipeline': pipeline_examples_per_sec(source, steps), 'train_step': step_examples_per_sec(config, source, steps)}
  verdict = 'input-bound' if result['pipeline'] < result['train_step'] else 'compute-bound'
  print(f'{argv[0]}: pipeline {result["pipeline"]:.0f} examples/s | train step consumes {result["train_step"]:.0f} '
        f'examples/s on {jax.device_count()} {jax.devices()[0].platform} device(s) -> {verdict}', flush=True)
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
