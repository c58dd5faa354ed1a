"""Reinforcement learning: PPO's pieces against hand computations, and whole runs through the shared loop."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, launch, sigterm_at, train_on_devices

from jaxlab import config as config_lib
from jaxlab.data.environments import Transition
from jaxlab.data.episodes import EpisodeSource
from jaxlab.run import program as program_lib
from jaxlab.run import train
from jaxlab.tasks.dqn import DQNSettings, ReplayBuffer, epsilon
from jaxlab.tasks.ppo import clipped_surrogate, gae

pytest.importorskip('gymnax')


TINY = {
    'ppo': {'ppo.num_envs': 2, 'ppo.num_steps': 8, 'ppo.epochs': 2, 'ppo.minibatches': 2},
    'dqn': {'dqn.num_envs': 2, 'dqn.buffer_size': 50, 'dqn.batch_size': 8, 'dqn.learning_starts': 20,
            'dqn.train_every': 2, 'dqn.target_every': 6, 'dqn.updates_per_step': 3},
}


def tiny_config(algorithm='ppo', **overrides):
  """configs/gymnax/<algorithm>.py, 2 environments, a few transitions per step, 12 loop steps."""
  config = config_lib.load(os.path.join(ROOT, 'configs', 'gymnax', f'{algorithm}.py'))
  settings = {**TINY[algorithm], 'model.hidden': (8,), 'data.eval_episodes': 2, 'train.num_steps': 12,
              'train.log_every': 4, 'train.eval_every': 6, 'train.checkpoint_every': 6, 'train.steps_per_call': 1,
              **overrides}
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


@pytest.mark.parametrize('algorithm', ['ppo', 'dqn'])
def test_training_resumes_bitwise_after_sigterm_environments_and_buffer_included(algorithm, tmp_path):
  # Calls of 2 steps; a signal after step 4 stops the run at 6, where only the signal makes a checkpoint.
  config = tiny_config(algorithm, **{'train.checkpoint_every': 12, 'train.steps_per_call': 2})
  whole = train.train(config, str(tmp_path / 'whole'))

  stopped = train.train(config, str(tmp_path / 'resumed'), hooks=[sigterm_at(4)])
  assert stopped['preempted'] and stopped['step'] == 6
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert resumed['steps_trained'] == 6 and resumed['test_return'] == whole['test_return']
  a, b = (jax.device_get(program_lib.restore_checkpoint(config, str(tmp_path / w))[2]) for w in ('whole', 'resumed'))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):  # params, Adam, environments, buffer, keys
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('algorithm', ['ppo', 'dqn'])
def test_several_loop_steps_per_call_train_as_one_per_call(algorithm, tmp_path):
  states = []
  for k in (1, 5):  # calls of 4, 2, 2, 4 steps: cut at the log steps 4, 8 and the evaluation and checkpoint step 6
    train.train(tiny_config(algorithm, **{'train.steps_per_call': k}), str(tmp_path / str(k)))
    states.append(jax.device_get(program_lib.restore_checkpoint(tiny_config(algorithm, **{'train.steps_per_call': k}),
                                                          str(tmp_path / str(k)))[2]))
  for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
    np.testing.assert_array_equal(x, y)


def test_environment_steps_per_second_count_every_replica(tmp_path):
  train.train(tiny_config(num_replicas=2, **{'train.num_steps': 4, 'train.eval_every': 4}), str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    logged = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert logged  # 2 replicas x 2 environments x 8 steps each loop step
  assert all(r['env_steps_per_sec'] == pytest.approx(r['steps_per_sec'] * 32) for r in logged)


def test_a_sweep_of_the_shipped_config_runs_each_learning_rate_with_vmapped_seeds(tmp_path):
  tiny = {**TINY['ppo'], 'model.hidden': (8,), 'data.eval_episodes': 2, 'train.num_steps': 4, 'train.log_every': 2,
          'train.eval_every': 4, 'train.checkpoint_every': 4, 'num_replicas': 2}
  workdir = tmp_path / 'sweep'
  proc = launch('sweep', f'--config={os.path.join(ROOT, "configs", "gymnax", "ppo.py")}', f'--workdir={workdir}',
                '--parallel=2', *(f'--config.{k}={v}' for k, v in tiny.items()), timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.count(' done ') == 3 and proc.stdout.count('test_return') >= 3  # the default metric of RL runs
  with open(workdir / 'results.csv') as f:
    rows = {float(r['optimizer.learning_rate']): r for r in csv.DictReader(f)}
  assert sorted(rows) == [1e-4, 2.5e-4, 1e-3]
  for rate, row in rows.items():
    point = workdir / f'learning_rate={rate}'
    config = json.loads((point / 'config.json').read_text())
    assert config['optimizer']['learning_rate'] == rate and config['num_replicas'] == 2
    summary = json.loads((point / 'summary.json').read_text())
    assert len(summary['test_return_replicas']) == 2
    assert float(row['test_return']) == pytest.approx(np.mean(summary['test_return_replicas']))
  assert '| test_return' in (workdir / 'results.md').read_text() and (workdir / 'test_return.png').exists()


def _primitives(jaxpr):
  """(name, input shapes) of every equation in `jaxpr` and in the jaxprs nested in it (scan, jit, cond...)."""
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name, [v.aval.shape for v in eqn.invars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _primitives(inner)


def test_replicated_init_runs_each_qr_on_one_matrix():
  # jaxlib 0.10's batched CPU LAPACK kernels can deadlock the thread pool (a 64-seed PPO init hung): the
  # orthogonal initialiser's QR must see one replica's matrix at a time.
  program = program_lib.build(tiny_config(num_replicas=3))
  qrs = [shapes for name, shapes in _primitives(jax.make_jaxpr(program.task.init)(program.rng, program.example).jaxpr)
         if name == 'qr']
  assert qrs and all(len(shape) == 2 for shapes in qrs for shape in shapes)


def test_ppo_learns_cartpole_in_a_few_thousand_steps(tmp_path):
  config = tiny_config(**{'ppo.num_envs': 4, 'ppo.num_steps': 64, 'model.hidden': (32, 32), 'train.num_steps': 60,
                          'train.eval_every': 60, 'data.eval_episodes': 4, 'optimizer.learning_rate': 1e-3})
  summary = train.train(config, str(tmp_path))
  assert summary['test_return'] > 100  # a random policy lasts about 22 steps


def test_ppo_with_replicas_is_the_same_on_one_and_on_eight_devices(tmp_path):
  setup = "from test_rl import tiny_config\nconfig = tiny_config(num_replicas=2)"
  (one, summary_one), (eight, summary_eight) = (train_on_devices(tmp_path, d, setup) for d in (1, 8))
  for a, b in zip(one, eight, strict=True):
    assert a.shape[0] == 2  # the replica axis
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert summary_one['test_return'] == summary_eight['test_return']


def _transitions(first: int, n: int) -> Transition:
  values = jnp.arange(first, first + n, dtype=jnp.float32)
  return Transition(values[:, None], values.astype(jnp.int32), values, values > 100, values > 100, values[:, None] + 0.5)


def test_replay_buffer_wraps_around_and_samples_only_filled_slots():
  buffer = ReplayBuffer.empty(5, (1,), jnp.float32).add(_transitions(0, 3))
  assert int(buffer.size) == 3 and int(buffer.position) == 3
  drawn = np.asarray(buffer.sample(jax.random.key(0), 1000)['action'])
  assert set(np.unique(drawn)) == {0, 1, 2}  # never an empty slot (they hold 0 too, so reward tells them apart)
  buffer = buffer.add(_transitions(3, 4))  # 7 transitions into 5 slots: 5 and 6 overwrite slots 0 and 1
  assert int(buffer.size) == 5 and int(buffer.position) == 2
  np.testing.assert_array_equal(buffer.action, [5, 6, 2, 3, 4])
  np.testing.assert_array_equal(buffer.next_obs[:, 0], [5.5, 6.5, 2.5, 3.5, 4.5])
  assert set(np.unique(np.asarray(buffer.sample(jax.random.key(1), 1000)['reward']))) == {2.0, 3.0, 4.0, 5.0, 6.0}


def test_epsilon_falls_linearly_over_the_exploration_fraction():
  settings = DQNSettings(start_epsilon=1.0, end_epsilon=0.1, exploration_fraction=0.5)
  values = [float(epsilon(jnp.asarray(t), settings, 1000)) for t in (0, 250, 500, 900)]
  np.testing.assert_allclose(values, [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_the_dqn_target_network_is_copied_exactly_every_target_every_environment_steps():
  from jaxlab import tasks
  config = tiny_config('dqn', **{'dqn.learning_starts': 0, 'dqn.updates_per_step': 1})
  task = tasks.make(config, EpisodeSource(1))
  state, step = task.init(jax.random.key(0), {}), jax.jit(task.train_step)
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  copies = []
  for _ in range(10):  # 2 environments x 2 steps = 4 environment steps per loop step
    old_target = leaves(state.model_state['target'])
    state, _ = step(state, {})
    target = leaves(state.model_state['target'])
    if any(np.any(a != b) for a, b in zip(old_target, target)):
      assert all(np.array_equal(a, b) for a, b in zip(target, leaves(state.params)))  # a copy of the online network
      copies.append(int(state.model_state['env_steps']))
  # target_every 6: the first check at or past 6, 12, 18, ... environment steps, checks every 4
  assert copies == [8, 12, 20, 24, 32, 36]


def test_curves_read_each_step_once_with_one_column_per_replica_and_plot_them(tmp_path):
  from jaxlab.observe import curves
  lines = ['{"step": 10, "split": "train", "episode_return": 2.0, "episode_return_replicas": [1.0, 3.0]}',
           '{"step": 10, "split": "test", "return": 9.0}',
           '{"step": 20, "split": "train", "episode_return": 5.0, "episode_return_replicas": [4.0, 6.0]}',
           'not json, a line cut short by a crash',
           '{"step": 20, "split": "train", "episode_return": 7.0, "episode_return_replicas": [6.0, 8.0]}']
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  steps, values = curves.read(str(tmp_path), 'episode_return')
  np.testing.assert_array_equal(steps, [10, 20])
  np.testing.assert_array_equal(values, [[1.0, 3.0], [6.0, 8.0]])  # a step logged twice (a resume): the last
  assert curves.write(str(tmp_path), 'episode_return') == str(tmp_path / 'episode_return.png')
  assert (tmp_path / 'episode_return.png').stat().st_size > 1000
  assert curves.write(str(tmp_path), 'nothing_logged') is None
