"""PPO on CartPole-v1, 500,000 environment steps: jaxlab's whole run against PureJaxRL's ppo.py, one process.

  python experiments/rl_cartpole/bench.py --purejaxrl=PATH [--seeds=64] [--repeats=3]
  python experiments/rl_cartpole/bench.py --profile   # where a one-seed run of a new program spends its time
  python experiments/rl_cartpole/bench.py --compile_times   # each program a first one-seed run compiles
  python experiments/rl_cartpole/bench.py --dispatch   # the PPO step called 976 times vs in one lax.scan
  python experiments/rl_cartpole/bench.py --calls   # the loop's program: 976 steps in 1, 2, 8 or 10 calls

PATH is a checkout of github.com/luchris429/purejaxrl (its purejaxrl/ppo.py, unmodified; it needs
`pip install distrax`). gymnax 1.x steps return six values, so gymnax.make hands it environments
inside gymnax's own LegacyStepAPIWrapper; its wrappers.py imports brax and navix for wrappers ppo.py
does not use, so empty stand-in modules take their place. Each repeat times, alternating, PureJaxRL's jitted train
(first call: with compilation; second call: the program alone) and jaxlab's train.train with the
config's defaults (evaluation of 10 episodes at the end, checkpoints every 500 steps, logs every
100), three times in fresh workdirs: the first builds its program and compiles it, the second runs the
same program again (`train.train(..., program=)`: nothing traced or compiled, like PureJaxRL's second
call), the third builds a new program, which traces and lowers it and reads the persistent compilation
cache, as a second `launch.py` would. Then the same for `--seeds` seeds at once (jax.vmap
of PureJaxRL's train; jaxlab's num_replicas). Every repeat is a fresh process with an empty cache,
the order of the two alternating. Prints medians and ratios. Neither side counts Python's start.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_CONFIG = {'LR': 2.5e-4, 'NUM_ENVS': 4, 'NUM_STEPS': 128, 'TOTAL_TIMESTEPS': 5e5, 'UPDATE_EPOCHS': 4,
               'NUM_MINIBATCHES': 4, 'GAMMA': 0.99, 'GAE_LAMBDA': 0.95, 'CLIP_EPS': 0.2, 'ENT_COEF': 0.01,
               'VF_COEF': 0.5, 'MAX_GRAD_NORM': 0.5, 'ACTIVATION': 'tanh', 'ENV_NAME': 'CartPole-v1',
               'ANNEAL_LR': True, 'DEBUG': False}


def _stand_in_modules(*names: str) -> None:
  import types
  for name in names:
    module = sys.modules.setdefault(name, types.ModuleType(name))
    module.__getattr__ = lambda attribute: object  # any name imported from it
    parent, _, child = name.rpartition('.')
    if parent:
      setattr(sys.modules[parent], child, module)


def peer_module(path: str):
  _stand_in_modules('brax', 'brax.envs', 'brax.envs.wrappers', 'brax.envs.wrappers.training', 'navix')
  sys.path.insert(0, os.path.join(path, 'purejaxrl'))
  import ppo
  return ppo


def peer_train(ppo):
  """PureJaxRL's train function, its environment made through the six-to-five-value wrapper (for it alone)."""
  import gymnax
  from gymnax.wrappers.compat import LegacyStepAPIWrapper
  make = gymnax.make
  gymnax.make = lambda name, **kwargs: (lambda env, params: (LegacyStepAPIWrapper(env), params))(*make(name, **kwargs))
  try:
    return ppo.make_train(dict(PEER_CONFIG))
  finally:
    gymnax.make = make


def timed(fn) -> tuple[float, object]:
  began = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - began, out


def peer_times(ppo, seeds: int) -> tuple[float, float, None, float]:
  """(first call, second call, None: no third run) seconds of one jitted train, and the mean final return of its
  last update."""
  train = peer_train(ppo)
  keys = jax.random.split(jax.random.PRNGKey(30), seeds)
  fn = jax.jit(jax.vmap(train)) if seeds > 1 else jax.jit(lambda k: train(k[0]))
  first, _ = timed(lambda: fn(keys))
  second, out = timed(lambda: fn(keys))
  info = out['metrics']
  returns = info['returned_episode_returns'][..., -1, :, :].mean()  # the last update's finished episodes
  return first, second, None, float(returns)


def our_times(seeds: int, reuse: bool = True) -> tuple[float, float, float | None, float]:
  """Seconds of three train.train runs in fresh workdirs, and the last one's mean test return: the first
  builds the program and compiles it into this process's empty persistent cache; the second runs that same
  program again (as PureJaxRL's second call reuses its jitted train); the third builds a new program, which
  traces, lowers and reads the persistent cache as a second `launch.py` would (None without `reuse`:
  the second run is then that one)."""
  from jaxlab import config as config_lib
  from jaxlab.run import program as program_lib
  from jaxlab.run import train
  config = config_lib.load(os.path.join(ROOT, 'configs', 'gymnax', 'ppo.py'))
  config_lib.set_value(config, 'num_replicas', seeds)
  built = []

  def run(workdir, program=None):
    if program is None:
      built.append(program := program_lib.build(config))
    return train.train(config, workdir, program=program)

  with tempfile.TemporaryDirectory() as workdirs:
    first, _ = timed(lambda: run(os.path.join(workdirs, 'a')))
    second, summary = timed(lambda: run(os.path.join(workdirs, 'b'), built[0] if reuse else None))
    if not reuse:
      return first, second, None, summary['test_return']
    new_program, summary = timed(lambda: run(os.path.join(workdirs, 'c')))
  return first, second, new_program, summary['test_return']


def one_repeat(args: argparse.Namespace) -> None:
  """Both frameworks at 1 and `seeds` seeds in this fresh process, with an empty compilation cache; one JSON line."""
  from jaxlab import parallel
  with tempfile.TemporaryDirectory() as cache:
    parallel.enable_compilation_cache(cache)
    ppo = peer_module(args.purejaxrl)
    rows = []
    for seeds in sorted({1, args.seeds}):
      order = [('purejaxrl', lambda: peer_times(ppo, seeds)), ('jaxlab', lambda: our_times(seeds))]
      for name, measure in order[::-1] if args.reverse else order:
        rows.append([name, seeds, *measure()])
    print('ROWS', json.dumps(rows), flush=True)


def profile_second_run() -> None:
  """cProfile of jaxlab's one-seed runs after the compilation cache is filled: the loop's parts, lowering,
  the cache, evaluation, checkpoints, the curve. Two runs of new programs (as two `launch.py` would) are profiled:
  the `percall` columns are one run's."""
  import cProfile
  import pstats

  from jaxlab import parallel
  with tempfile.TemporaryDirectory() as cache:
    parallel.enable_compilation_cache(cache)
    our_times(1, reuse=False)  # compiles into the cache, then runs again under the profiler below
    profile = cProfile.Profile()
    profile.runcall(our_times, 1, reuse=False)
  pattern = (r'jaxlab/(train|checkpoint|curves)\.py:\d+\((train|build|_restore_newest|init_state|loop|flush|'
             r'_evaluate_and_log|save|_summary|write)\)|pjit\.py:\d+\(_pjit_lower\)|compile_or_get_cached')
  pstats.Stats(profile).sort_stats('cumulative').print_stats(pattern)


def print_compile_times() -> None:
  """Each XLA compilation of a first one-seed jaxlab run (empty cache), from jax's own compile log."""
  import logging

  from jaxlab import config as config_lib
  from jaxlab import parallel
  from jaxlab.run import train
  compiles = []

  class Collect(logging.Handler):
    def emit(self, record):
      if record.getMessage().startswith('Finished XLA compilation of'):
        compiles.append(record.getMessage())

  jax.config.update('jax_log_compiles', True)
  logging.getLogger('jax').addHandler(Collect())
  with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as workdir:
    parallel.enable_compilation_cache(cache)
    train.train(config_lib.load(os.path.join(ROOT, 'configs', 'gymnax', 'ppo.py')), workdir)
  print('\n'.join(compiles))


def print_dispatch_cost(repeats: int) -> None:
  """The config's PPO step 976 times from fresh states: one jitted call per step against one lax.scan."""
  from jaxlab import config as config_lib
  from jaxlab import data, tasks
  config = config_lib.load(os.path.join(ROOT, 'configs', 'gymnax', 'ppo.py'))
  source = data.make_source(config.data, config.seed)
  task = tasks.make(config, source)
  batch, steps = source.example_batch(), config.train.num_steps
  init = jax.jit(task.init)
  step = jax.jit(task.train_step, donate_argnums=0)
  scanned = jax.jit(lambda state: jax.lax.scan(lambda s, _: task.train_step(s, batch), state, None, length=steps))

  def called(state):
    for _ in range(steps):
      state, _ = step(state, batch)
    return state

  for run in (called, scanned):
    jax.block_until_ready(run(init(jax.random.PRNGKey(0), batch)))  # compiles
  for repeat in range(repeats):
    seconds = [timed(lambda: run(init(jax.random.PRNGKey(repeat), batch)))[0] for run in (called, scanned)]
    print(f'repeat {repeat}: {steps} steps called one by one {seconds[0]:.2f} s ({seconds[0] / steps * 1e3:.2f} '
          f'ms/step), in one lax.scan {seconds[1]:.2f} s ({seconds[1] / steps * 1e3:.2f} ms/step)', flush=True)


def print_call_costs(repeats: int) -> None:
  """The loop's compiled program (the config's, several steps per call) running the 976 steps in 1, 2, 8
  or 10 calls (10: the config's log lines end its calls), dispatched back to back, in shuffled order."""
  import random

  from jaxlab import config as config_lib
  from jaxlab.run import program as program_lib
  from jaxlab.run import steps
  config = config_lib.load(os.path.join(ROOT, 'configs', 'gymnax', 'ppo.py'))
  config_lib.set_value(config, 'train.steps_per_call', config.train.num_steps)
  program = program_lib.build(config)
  batch = next(steps.device_batches(program, 0, config.train))
  plans = {'1 x 976': [976], '2 x 488': [488] * 2, '8 x 122': [122] * 8, '10 (9 x 100 + 76)': [100] * 9 + [76]}

  def run(lengths):
    state, totals = program.init_state(), program.zero_totals()
    jax.block_until_ready(state)
    began = time.perf_counter()
    for length in lengths:
      state, totals = program.train_step(state, totals, batch, None, length)
    jax.block_until_ready(totals)
    return time.perf_counter() - began

  for lengths in plans.values():
    run(lengths)  # compiles (one program for every length)
  seconds = {name: [] for name in plans}
  for repeat in range(repeats):
    for name in random.Random(repeat).sample(list(plans), len(plans)):
      seconds[name].append(run(plans[name]))
  for name, values in seconds.items():
    print(f'{name} calls: median {statistics.median(values):.2f} s ({" ".join(f"{v:.2f}" for v in values)})')


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--purejaxrl')
  parser.add_argument('--profile', action='store_true')
  parser.add_argument('--compile_times', action='store_true')
  parser.add_argument('--dispatch', action='store_true')
  parser.add_argument('--calls', action='store_true')
  parser.add_argument('--seeds', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--one_repeat', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--reverse', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.profile:
    return profile_second_run()
  if args.compile_times:
    return print_compile_times()
  if args.dispatch:
    return print_dispatch_cost(args.repeats)
  if args.calls:
    return print_call_costs(args.repeats)
  if not args.purejaxrl:
    parser.error('--purejaxrl=PATH (a checkout of github.com/luchris429/purejaxrl) is needed, or --profile, '
                 '--compile_times, --dispatch, --calls')
  if args.one_repeat:
    return one_repeat(args)
  rows = {}
  for repeat in range(args.repeats):  # each in a fresh process; which framework goes first alternates
    command = [sys.executable, __file__, '--one_repeat', f'--purejaxrl={args.purejaxrl}', f'--seeds={args.seeds}']
    # jaxlib 0.10's batched CPU QR can deadlock (PureJaxRL's vmapped init batches it): a hung repeat fails.
    out = subprocess.run(command + (['--reverse'] if repeat % 2 else []), capture_output=True, text=True, check=True,
                         timeout=3600)
    for name, seeds, *seconds, returns in json.loads(out.stdout.split('ROWS')[1]):
      rows.setdefault((name, seeds), []).append(seconds)
      shown = ', '.join(f'{what} {s:.1f} s' for what, s in zip(('first', 'second', 'new program'), seconds) if s)
      print(f'repeat {repeat}: {name}, {seeds} seeds: {shown}, return {returns:.1f}', flush=True)
  median = lambda name, seeds, i: statistics.median(r[i] for r in rows[(name, seeds)])
  print('\n| seeds | PureJaxRL first / second call | jaxlab first / second run / new program '
        '| ratio first / second / new program to second call |')
  print('|---|---|---|---|')
  for seeds in sorted({1, args.seeds}):
    peer, ours = [median('purejaxrl', seeds, i) for i in (0, 1)], [median('jaxlab', seeds, i) for i in (0, 1, 2)]
    print(f'| {seeds} | {peer[0]:.1f} / {peer[1]:.1f} s | {ours[0]:.1f} / {ours[1]:.1f} / {ours[2]:.1f} s | '
          f'{ours[0] / peer[0]:.2f} / {ours[1] / peer[1]:.2f} / {ours[2] / peer[1]:.2f} |')


if __name__ == '__main__':
  main()
