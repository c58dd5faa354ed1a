"""`launch.py bench`: the framework's training loop against a minimal hand-written jit loop, another
config, replicas, or an independent plain-JAX implementation of the same family (`--bench_against=reference`).

Both sides train with the same optimizer, batch size and data, in one process, alternating repeats
so machine noise hits both alike. Reported: median steps/s and the ratio.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import ml_collections
import optax
from absl import flags
from flax.core import meta

from jaxlab import config as config_lib
from jaxlab import data, models, optim
from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.evaluators import references
from jaxlab.run import program, train

WARMUP_STEPS = 50
HAND_LOOP_TASKS = ('classification', 'language_model')


def _training_only(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy that neither evaluates nor checkpoints before the end (so no early stopping either)."""
  config = config.copy_and_resolve_references()
  config.train.eval_every = config.train.checkpoint_every = 0
  config.train.early_stopping_metric = ''
  return config


class _Timed(Exception):
  """Ends a timed run once both marks are taken: the rest of it (the final evaluation) is not what is measured."""


def _timed_config(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """What framework_steps_per_sec trains: WARMUP_STEPS, `steps` timed, and calls after them that are not."""
  config = _training_only(config)
  config.train.num_steps = WARMUP_STEPS + steps + 2 * config.train.steps_per_call
  return config


def framework_steps_per_sec(config: ml_collections.ConfigDict, steps: int,
                            built: program.Program | None = None) -> float:
  """Steps/s of train.train() from the first call to end at or after step WARMUP_STEPS to the first at or
  after WARMUP_STEPS + steps (calls run up to train.steps_per_call steps); the run ends there.
  `built`: program.build(_timed_config(config, steps))'s, reused (nothing traced or compiled again)."""
  config = _timed_config(config, steps)
  marks = {}

  def clock(step, state):
    if (not marks and step >= WARMUP_STEPS) or (len(marks) == 1 and step >= WARMUP_STEPS + steps):
      jax.block_until_ready(state)
      marks[step] = time.perf_counter()
      if len(marks) == 2:
        raise _Timed

  with tempfile.TemporaryDirectory() as workdir:
    try:
      train.train(config, workdir, hooks=[clock], program=built)
    except _Timed:
      pass
  (first, began), (last, ended) = marks.items()
  return (last - first) / (ended - began)


def hand_loop_steps_per_sec(config: ml_collections.ConfigDict, steps: int) -> float:
  """The same model, optimizer and batches in the shortest correct loop: jit, donate, feed numpy.

  Its loss, mean cross-entropy of model(x) against y, is that of classification and of next-token
  prediction alike (logits (batch, classes) or (batch, length, vocabulary)).
  """
  source = data.make_source(config.data, config.seed)
  model = models.create(config.model, source.num_classes)
  tx, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
  batches = source.train_batches(0)
  first = next(batches)
  variables = meta.unbox(model.init(jax.random.PRNGKey(config.seed), first['x'][:1]))  # drop sharding names
  if set(variables) != {'params'}:
    raise ConfigError(f'bench: the hand loop trains parameters only; model {config.model.name!r} also has '
                      f'{", ".join(sorted(set(variables) - {"params"}))} (e.g. BatchNorm statistics)')
  params = variables['params']
  opt_state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, xb), yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for i in range(WARMUP_STEPS + steps):
    if i == WARMUP_STEPS:
      jax.block_until_ready(params)
      start = time.perf_counter()
    batch = first if i == 0 else next(batches)
    params, opt_state, loss = step(params, opt_state, batch['x'], batch['y'])
  jax.block_until_ready(params)
  return steps / (time.perf_counter() - start)


def format_memory(stats: Any) -> str:
  """One line of XLA's memory analysis of a compiled program."""
  mib = lambda name: getattr(stats, f'{name}_size_in_bytes') / 2**20
  return (f'compiled train step, per device: arguments {mib("argument"):.2f} MiB, outputs {mib("output"):.2f} MiB, '
          f'temporaries {mib("temp"):.2f} MiB, generated code {mib("generated_code"):.2f} MiB')


def _check_counts(**counts: int) -> None:
  for name, value in counts.items():
    if value < 1:
      raise ConfigError(f'--{name} must be >= 1, got {value}')


def _alternating(repeats: int, measures: dict[str, Callable[[], float]]) -> list[float]:
  """Median steps/s of each measure, run in turn `repeats` times so machine noise hits all alike."""
  results = {name: [] for name in measures}
  for r in range(repeats):
    for name, measure in measures.items():
      results[name].append(measure())
    print(f'  repeat {r + 1}: ' + ', '.join(f'{name} {v[-1]:.4g} steps/s' for name, v in results.items()), flush=True)
  return [statistics.median(v) for v in results.values()]


def run(config: ml_collections.ConfigDict, steps: int = 2000, repeats: int = 5) -> dict[str, float]:
  """Prints and returns median steps/s of both loops and framework time / hand-loop time."""
  _check_counts(bench_steps=steps, bench_repeats=repeats)
  if config.task not in HAND_LOOP_TASKS:
    raise ConfigError(f'bench: the hand loop computes the loss of {" and ".join(HAND_LOOP_TASKS)}; '
                      f'task is {config.task!r}')
  print(f'bench: model {config.model.name}, optimizer {config.optimizer.name}, batch {config.data.batch_size}, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s); {repeats} repeats of {steps} steps', flush=True)
  print(format_memory(program.compiled_memory(config)), flush=True)
  framework, hand = _alternating(repeats, {'framework': lambda: framework_steps_per_sec(config, steps),
                                           'hand loop': lambda: hand_loop_steps_per_sec(config, steps)})
  result = {'framework_steps_per_sec': framework, 'hand_steps_per_sec': hand}
  result['time_ratio'] = result['hand_steps_per_sec'] / result['framework_steps_per_sec']
  print(f'median: framework {result["framework_steps_per_sec"]:.4g} steps/s | hand loop '
        f'{result["hand_steps_per_sec"]:.4g} steps/s | framework time / hand-loop time = {result["time_ratio"]:.3f}',
        flush=True)
  return result


def run_against(config: ml_collections.ConfigDict, overrides: list[str], steps: int = 2000,
                repeats: int = 5) -> dict[str, float]:
  """The framework loop on `config` against the same with `overrides` ('key=value'), alternating repeats:
  median steps/s of each and their ratio (e.g. two implementations of one layer)."""
  _check_counts(bench_steps=steps, bench_repeats=repeats)
  other = config.copy_and_resolve_references()
  config_lib.apply_overrides(other, overrides, '--bench_against')
  label = ', '.join(overrides)
  print(f'bench: model {config.model.name}, {jax.device_count()} {jax.devices()[0].platform} device(s); '
        f'{repeats} repeats of {steps} steps, against {label}', flush=True)
  base, changed = _alternating(repeats, {'config': lambda: framework_steps_per_sec(config, steps),
                                        label: lambda: framework_steps_per_sec(other, steps)})
  result = {'steps_per_sec': base, 'against_steps_per_sec': changed}
  result['time_ratio'] = result['steps_per_sec'] / result['against_steps_per_sec']
  print(f'median: config {result["steps_per_sec"]:.4g} steps/s | {label} {result["against_steps_per_sec"]:.4g} '
        f'steps/s | time with {label} / time without = {result["time_ratio"]:.3f}', flush=True)
  return result


def reference_steps_per_sec(case: references.Case, steps: int) -> float:
  """Steps/s of the reference's step fed the config's batches, after WARMUP_STEPS untimed."""
  carry, batches = case.init(), case.batches()
  for i in range(WARMUP_STEPS + steps):
    if i == WARMUP_STEPS:
      jax.block_until_ready(carry)
      start = time.perf_counter()
    carry = case.step(carry, next(batches))
  jax.block_until_ready(carry)
  return steps / (time.perf_counter() - start)


def matmul_flops_per_sec(n: int = 1024, repeats: int = 20) -> float:
  """This device's float32 matmul rate: the median time of an (n, n) @ (n, n) jnp.dot."""
  a = jax.numpy.ones((n, n), jax.numpy.float32)
  dot = jax.jit(jax.numpy.dot)
  dot(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    began = time.perf_counter()
    dot(a, a).block_until_ready()
    times.append(time.perf_counter() - began)
  return 2 * n ** 3 / statistics.median(times)


def _flops(lowered: Any) -> float:
  """FLOPs of a lowered program by XLA's cost analysis of its HLO (no compilation)."""
  cost = lowered.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost).get('flops', 0.0))


def check_same_loss(case: references.Case, family: str) -> None:
  """Refuses a reference that does not compute jaxlab's loss from the same parameters."""
  gap = abs(case.jaxlab_loss - case.reference_loss)
  print(f'equal-loss check ({family}): jaxlab {case.jaxlab_loss:.7g}, reference {case.reference_loss:.7g} from the '
        f'same parameters on one batch, |diff| {gap:.2e}', flush=True)
  if not gap <= case.tolerance * max(1.0, abs(case.jaxlab_loss)):
    raise JaxlabError(f'bench: the {family} reference computes loss {case.reference_loss:.7g} where jaxlab computes '
                      f'{case.jaxlab_loss:.7g} from the same parameters; the comparison would time different functions')


def run_reference(config: ml_collections.ConfigDict, steps: int = 2000, repeats: int = 5) -> dict[str, float]:
  """jaxlab's training loop against the family's independent reference (jaxlab.evaluators.references):
  median steps/s of each, the time ratio, and each step's XLA FLOPs per second against the matmul rate."""
  _check_counts(bench_steps=steps, bench_repeats=repeats)
  family = references.family(config)
  timed = _timed_config(config, steps)
  built = program.build(timed)  # one program for the check, the FLOP count and every repeat
  case = references.case(timed, built)
  check_same_loss(case, family)
  flops = {'jaxlab': _flops(program.lowered_train_step(built, timed)),
           'reference': _flops(case.step.lower(case.init(), next(case.batches())))}
  peak = matmul_flops_per_sec()
  print(f'bench: {family} (model {config.model.name}), {jax.device_count()} {jax.devices()[0].platform} device(s); '
        f'float32 matmul rate (1024^3 jnp.dot) {peak / 1e9:.1f} GFLOP/s; {repeats} repeats of {steps} steps',
        flush=True)
  rates = dict(zip(('jaxlab', 'reference'), _alternating(repeats, {
      'jaxlab': lambda: framework_steps_per_sec(config, steps, built),
      'reference': lambda: reference_steps_per_sec(case, steps)})))
  result = {'family': family, 'matmul_gflops_per_sec': peak / 1e9}
  for name, rate in rates.items():
    achieved = flops[name] * rate
    result.update({f'{name}_ms_per_step': 1e3 / rate, f'{name}_gflop_per_step': flops[name] / 1e9,
                   f'{name}_gflops_per_sec': achieved / 1e9, f'{name}_fraction_of_matmul': achieved / peak})
    print(f'  {name:9s} {1e3 / rate:8.3f} ms/step | {flops[name] / 1e9:.4g} GFLOP/step (XLA count) | '
          f'{achieved / 1e9:.3g} GFLOP/s = {100 * achieved / peak:.1f} % of the matmul rate', flush=True)
  result['time_ratio'] = rates['reference'] / rates['jaxlab']
  print(f'median: jaxlab time / reference time = {result["time_ratio"]:.3f}', flush=True)
  return result


def _timed_train(config: ml_collections.ConfigDict) -> float:
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train.train(config, workdir)
    return time.perf_counter() - start


def run_replicas(config: ml_collections.ConfigDict, num_replicas: int = 8, repeats: int = 3) -> dict[str, float]:
  """Wall time of `num_replicas` seeds as one vmapped run against as many separate runs (in-process)."""
  _check_counts(bench_replicas=num_replicas, bench_repeats=repeats)
  config = _training_only(config)
  print(f'bench replicas: {num_replicas} seeds of model {config.model.name}, {config.train.num_steps} steps each, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s), {repeats} repeats', flush=True)
  together, separate = [], []
  for r in range(repeats):
    vmapped = config.copy_and_resolve_references()
    vmapped.num_replicas = num_replicas
    together.append(_timed_train(vmapped))
    total = 0.0
    for seed in range(num_replicas):
      single = config.copy_and_resolve_references()
      single.seed = config.seed + seed
      total += _timed_train(single)
    separate.append(total)
    print(f'  repeat {r + 1}: vmapped {together[-1]:.1f}s, separate {separate[-1]:.1f}s', flush=True)
  result = {'vmapped_seconds': statistics.median(together), 'separate_seconds': statistics.median(separate)}
  result['speedup'] = result['separate_seconds'] / result['vmapped_seconds']
  print(f'median: {num_replicas} vmapped seeds {result["vmapped_seconds"]:.1f}s | {num_replicas} separate runs '
        f'{result["separate_seconds"]:.1f}s | speed-up {result["speedup"]:.2f}x', flush=True)
  return result


def define_command() -> Callable[[Any], None]:
  """`bench`: the config's steps/s through the loop against a hand-written loop (or another config, or replicas)."""
  steps = flags.DEFINE_integer('bench_steps', 2000, 'Timed steps per repeat.')
  repeats = flags.DEFINE_integer('bench_repeats', 5, 'Repeats (the median is reported).')
  replicas = flags.DEFINE_integer(
      'bench_replicas', 0, '>0: times that many seeds as one vmapped run against as many separate runs.')
  against = flags.DEFINE_list('bench_against', [], "'reference': times the loop against the family's independent "
                              'plain-JAX implementation; key=value overrides: the config with them against without.')

  def command(invocation: Any) -> None:
    if against.value == ['reference']:
      run_reference(invocation.config, steps=steps.value, repeats=repeats.value)
    elif against.value:
      run_against(invocation.config, against.value, steps=steps.value, repeats=repeats.value)
    elif replicas.value:
      run_replicas(invocation.config, replicas.value, repeats=repeats.value)
    else:
      run(invocation.config, steps=steps.value, repeats=repeats.value)
  return command
