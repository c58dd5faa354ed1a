"""Reinforcement learning: PPO's pieces against hand computations, and whole runs through the shared loop."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from jaxlab import config as config_lib
from jaxlab import train
from jaxlab.tasks.ppo import clipped_surrogate, gae

pytest.importorskip('gymnax')


def tiny_config(**overrides):
  """configs/cartpole/ppo.py, 2 environments x 8 steps, 12 loop steps."""
  config = config_lib.load(os.path.join(ROOT, 'configs', 'cartpole', 'ppo.py'))
  settings = {'ppo.num_envs': 2, 'ppo.num_steps': 8, 'ppo.epochs': 2, 'ppo.minibatches': 2, 'model.hidden': (8,),
              'data.eval_episodes': 2, 'train.num_steps': 12, 'train.log_every': 4, 'train.eval_every': 6,
              'train.checkpoint_every': 6, **overrides}
  for key, value in settings.items():
    config_lib.set_value(config, key, value)
  return config


def test_gae_by_hand_with_a_termination_and_a_truncation():
  # One environment, 5 steps; step 1 ends its episode by failing (terminated), step 3 by the time limit
  # (truncated): the first bootstraps from nothing, the second from the value of the observation it ended
  # on (7.0); both end the trace. gamma 0.9, lambda 0.8, so gamma * lambda = 0.72.
  rewards = jnp.ones((5, 1))
  values = jnp.array([0.5, 0.4, 0.3, 0.2, 0.1])[:, None]
  next_values = jnp.array([0.4, 9.0, 0.2, 7.0, 0.6])[:, None]
  terminated = jnp.array([False, True, False, False, False])[:, None]
  truncated = jnp.array([False, False, False, True, False])[:, None]
  advantages, targets = gae(rewards, values, next_values, terminated, truncated, 0.9, 0.8)
  deltas = [1 + 0.9 * 0.4 - 0.5, 1 - 0.4, 1 + 0.9 * 0.2 - 0.3, 1 + 0.9 * 7.0 - 0.2, 1 + 0.9 * 0.6 - 0.1]
  expected = [deltas[0] + 0.72 * deltas[1], deltas[1], deltas[2] + 0.72 * deltas[3], deltas[3], deltas[4]]
  np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)  # 1.292, 0.6, 5.992, 7.1, 1.44
  np.testing.assert_allclose(targets[:, 0], np.array(expected) + values[:, 0], rtol=1e-6)


def test_clipped_surrogate_by_hand():
  ratio = jnp.array([0.5, 1.0, 1.5, 1.5, 0.5])
  advantages = jnp.array([1.0, 2.0, 1.0, -1.0, -1.0])
  # min(r A, clip(r, 0.8, 1.2) A): 0.5, 2, 1.2, -1.5, -0.8; the loss is minus their mean
  assert float(clipped_surrogate(ratio, advantages, 0.2)) == pytest.approx(-(0.5 + 2 + 1.2 - 1.5 - 0.8) / 5)


def test_ppo_resumes_bitwise_after_sigterm_environments_included(tmp_path):
  config = tiny_config()
  whole = train.train(config, str(tmp_path / 'whole'))

  def sigterm_at_5(step, state):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  assert train.train(config, str(tmp_path / 'resumed'), hooks=[sigterm_at_5])['preempted']
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert 0 < resumed['steps_trained'] < 12 and resumed['test_return'] == whole['test_return']
  a, b = (jax.device_get(train.restore_checkpoint(config, str(tmp_path / w))[2]) for w in ('whole', 'resumed'))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):  # params, Adam, environments, keys
    np.testing.assert_array_equal(x, y)


def test_ppo_learns_cartpole_in_a_few_thousand_steps(tmp_path):
  config = tiny_config(**{'ppo.num_envs': 4, 'ppo.num_steps': 64, 'model.hidden': (32, 32), 'train.num_steps': 60,
                          'train.eval_every': 60, 'data.eval_episodes': 4, 'optimizer.learning_rate': 1e-3})
  summary = train.train(config, str(tmp_path))
  assert summary['test_return'] > 100  # a random policy lasts about 22 steps


TRAIN_AND_DUMP = '''
import sys, jax, numpy as np
sys.path.insert(0, {tests!r})
from test_rl import tiny_config
from jaxlab import train
assert jax.device_count() == {devices}, jax.devices()
summary = train.train(tiny_config(num_replicas=2), {workdir!r}, hooks=[lambda step, state: step == 12 and np.savez(
    {out!r}, *[np.asarray(x) for x in jax.tree.leaves(state.params)])])
print('METRIC', summary['test_return'])
'''


def test_ppo_with_replicas_is_the_same_on_one_and_on_eight_devices(tmp_path):
  results = []
  for devices in (1, 8):
    out = str(tmp_path / f'{devices}.npz')
    env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}
    code = TRAIN_AND_DUMP.format(tests=os.path.join(ROOT, 'tests'), devices=devices,
                                 workdir=str(tmp_path / str(devices)), out=out)
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
      results.append([f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))])
  for a, b in zip(*results, strict=True):
    assert a.shape[0] == 2  # the replica axis
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
