"""PPO on CartPole-v1, 500,000 environment steps: jaxlab's whole run against PureJaxRL's ppo.py, one process.

  python experiments/rl_cartpole/bench.py --purejaxrl=PATH [--seeds=64] [--repeats=3]

PATH is a checkout of github.com/luchris429/purejaxrl (its purejaxrl/ppo.py, unmodified; it needs
`pip install distrax`). gymnax 1.x steps return six values, so gymnax.make hands it environments
inside gymnax's own LegacyStepAPIWrapper. Each repeat times, alternating, PureJaxRL's jitted train
(first call: with compilation; second call: the program alone) and jaxlab's train.train with the
config's defaults (evaluation of 10 episodes at the end, checkpoints every 500 steps, logs every
100): a fresh workdir, so the first includes compilation and the second reads the persistent
compilation cache, as a second `launch.py` would. Then the same for `--seeds` seeds at once
(jax.vmap of PureJaxRL's train; jaxlab's num_replicas). Prints medians and ratios.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_CONFIG = {'LR': 2.5e-4, 'NUM_ENVS': 4, 'NUM_STEPS': 128, 'TOTAL_TIMESTEPS': 5e5, 'UPDATE_EPOCHS': 4,
               'NUM_MINIBATCHES': 4, 'GAMMA': 0.99, 'GAE_LAMBDA': 0.95, 'CLIP_EPS': 0.2, 'ENT_COEF': 0.01,
               'VF_COEF': 0.5, 'MAX_GRAD_NORM': 0.5, 'ACTIVATION': 'tanh', 'ENV_NAME': 'CartPole-v1',
               'ANNEAL_LR': True, 'DEBUG': False}


def peer_module(path: str):
  import gymnax
  from gymnax.wrappers.compat import LegacyStepAPIWrapper
  make = gymnax.make
  gymnax.make = lambda name, **kwargs: (lambda env, params: (LegacyStepAPIWrapper(env), params))(*make(name, **kwargs))
  sys.path.insert(0, os.path.join(path, 'purejaxrl'))
  import ppo
  return ppo


def timed(fn) -> tuple[float, object]:
  began = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - began, out


def peer_times(ppo, seeds: int) -> tuple[float, float, float]:
  """(first call, second call) seconds of one jitted train, and the mean final return of its last update."""
  train = ppo.make_train(dict(PEER_CONFIG))
  keys = jax.random.split(jax.random.PRNGKey(30), seeds)
  fn = jax.jit(jax.vmap(train)) if seeds > 1 else jax.jit(lambda k: train(k[0]))
  first, _ = timed(lambda: fn(keys))
  second, out = timed(lambda: fn(keys))
  info = out['metrics']
  returns = info['returned_episode_returns'][..., -1, :, :].mean()  # the last update's finished episodes
  return first, second, float(returns)


def our_times(seeds: int) -> tuple[float, float, float]:
  from jaxlab import config as config_lib
  from jaxlab import parallel, train
  config = config_lib.load(os.path.join(ROOT, 'configs', 'gymnax', 'ppo.py'))
  config_lib.set_value(config, 'num_replicas', seeds)
  with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as workdirs:
    parallel.enable_compilation_cache(cache)
    first, _ = timed(lambda: train.train(config, os.path.join(workdirs, 'a')))
    second, summary = timed(lambda: train.train(config, os.path.join(workdirs, 'b')))
  return first, second, summary['test_return']


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--purejaxrl', required=True)
  parser.add_argument('--seeds', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  ppo = peer_module(args.purejaxrl)
  rows = {}
  for _ in range(args.repeats):
    for seeds in (1, args.seeds):
      for name, measure in (('purejaxrl', lambda: peer_times(ppo, seeds)), ('jaxlab', lambda: our_times(seeds))):
        rows.setdefault((name, seeds), []).append(measure())
        print(name, seeds, 'seeds: first %.1f s, second %.1f s, return %.1f' % rows[(name, seeds)][-1], flush=True)
  print(f'\n| seeds | PureJaxRL first / second call | jaxlab first / second run | ratio first / second |')
  print('|---|---|---|---|')
  median = lambda name, seeds, i: statistics.median(r[i] for r in rows[(name, seeds)])
  for seeds in (1, args.seeds):
    peer, ours = [median('purejaxrl', seeds, i) for i in (0, 1)], [median('jaxlab', seeds, i) for i in (0, 1)]
    print(f'| {seeds} | {peer[0]:.1f} / {peer[1]:.1f} s | {ours[0]:.1f} / {ours[1]:.1f} s | '
          f'{ours[0] / peer[0]:.2f} / {ours[1] / peer[1]:.2f} |')


if __name__ == '__main__':
  main()
