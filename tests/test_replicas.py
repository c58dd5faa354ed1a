"""num_replicas: seeds trained together by one vmapped step equal the separate runs."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from jaxlab.run import train


def _final_params(config, workdir):
  captured = {}
  train.train(config, workdir, hooks=[lambda step, state: captured.update(params=jax.device_get(state.params))])
  with open(os.path.join(workdir, 'summary.json')) as f:
    return captured['params'], json.load(f)


def _assert_replicas_equal_separate_runs(tmp_path, overrides, group, num_replicas=3):
  singles = [_final_params(tiny_config(**{**overrides, 'seed': overrides['seed'] + r}), str(tmp_path / f'seed{r}'))
             for r in range(num_replicas)]
  workdir = str(tmp_path / 'replicas')
  config = tiny_config(num_replicas=num_replicas, replica_group=group, **overrides)
  stacked, summary = _final_params(config, workdir)
  assert len(summary['test_accuracy_replicas']) == num_replicas
  for r, (single, single_summary) in enumerate(singles):
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked), strict=True):
      np.testing.assert_allclose(a, b[r], rtol=1e-4, atol=1e-5)
    assert abs(single_summary['test_accuracy'] - summary['test_accuracy_replicas'][r]) <= 0.005
  return stacked, summary, [single_summary['test_accuracy'] for _, single_summary in singles], workdir


def test_replica_r_equals_the_run_with_seed_plus_r(tmp_path):
  overrides = {'train.num_steps': 30, 'model.channels': 8, 'seed': 4}
  stacked, summary, singles, workdir = _assert_replicas_equal_separate_runs(tmp_path, overrides, group=0)
  # The reported value is the mean over replicas: that of the three separate runs (30 steps).
  assert summary['test_accuracy'] == pytest.approx(sum(singles) / 3, abs=0.005)
  # Each replica's accuracy is also its confusion matrix's diagonal share (eval_test.json, counted apart).
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    for r, report in enumerate(json.load(f)['replicas']):
      confusion = np.array(report['confusion_matrix'])
      assert summary['test_accuracy_replicas'][r] == pytest.approx(np.trace(confusion) / confusion.sum())
  # The replicas really differ from each other (own init and data order).
  first_kernel = jax.tree.leaves(stacked)[0]
  assert not np.allclose(first_kernel[0], first_kernel[1])


@pytest.mark.parametrize('group', [1, 2])
def test_replicas_in_groups_equal_the_separate_runs(tmp_path, group):
  """One replica at a time, and groups of two (the second of one replica). 10 steps: past ~10 the MNIST-1D CNN's
  replica 2 leaves float tolerance of its separate run under any program change (a ReLU flips; seen at step 11)."""
  _assert_replicas_equal_separate_runs(tmp_path, {'train.num_steps': 10, 'model.channels': 8, 'seed': 4}, group)


def test_replicated_run_resumes_and_logs_per_replica_metrics(tmp_path):
  config = tiny_config(num_replicas=2, **{'train.num_steps': 10, 'train.checkpoint_every': 5})
  workdir = str(tmp_path / 'run')
  train.train(config, workdir)
  again = train.train(config, workdir)
  assert again['steps_trained'] == 0 and len(again['test_loss_replicas']) == 2
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    record = json.loads(f.readline())
  assert record['step'] == 5 and len(record['loss_replicas']) == 2
  # Replica r's logged loss is that of the separate run with seed r (5 steps: equal to float tolerance).
  for r in range(2):
    single = str(tmp_path / f'seed{r}')
    train.train(tiny_config(seed=r, **{'train.num_steps': 10, 'train.checkpoint_every': 5}), single)
    with open(os.path.join(single, 'metrics.jsonl')) as f:
      assert record['loss_replicas'][r] == pytest.approx(json.loads(f.readline())['loss'], rel=1e-5)
  assert record['loss'] == pytest.approx((record['loss_replicas'][0] + record['loss_replicas'][1]) / 2, rel=1e-12)


def test_replica_and_separate_run_accuracies_are_exchangeable_past_the_bitwise_horizon(tmp_path):
  """At 600 MLP steps replicas and separate runs no longer agree bitwise (that holds to ~300 steps; README:
  Many seeds), so the claim for full runs is statistical: the two sets of accuracies look like samples of
  one distribution."""
  from conftest import ROOT

  from jaxlab import config as config_lib
  seeds = 5

  def mlp(**overrides):
    config = config_lib.load(os.path.join(ROOT, 'configs', 'mnist1d', 'mlp.py'))
    for key, value in {'train.num_steps': 600, 'train.log_every': 600, 'train.eval_every': 600,
                       'train.checkpoint_every': 600, **overrides}.items():
      config_lib.set_value(config, key, value)
    return config

  together = np.array(train.train(mlp(num_replicas=seeds), str(tmp_path / 'x5'))['test_accuracy_replicas'])
  apart = np.array([train.train(mlp(seed=s), str(tmp_path / f's{s}'))['test_accuracy'] for s in range(seeds)])
  assert not np.array_equal(together, apart)  # past the horizon: not the same numbers
  assert len(set(together)) > 1 and len(set(apart)) > 1  # each replica its own seed
  spread_together, spread_apart = together.std(ddof=1), apart.std(ddof=1)
  assert 0.25 < spread_together / spread_apart < 4  # seed noise of the same size
  # Means within 3 standard errors of their difference (Welch).
  assert abs(together.mean() - apart.mean()) < 3 * np.sqrt((spread_together**2 + spread_apart**2) / seeds)


class _Counting:
  """A task whose step adds 1 to the state and counts, on the host, the replicas it really computes."""

  def __init__(self):
    self.computed = 0

  def count(self):
    self.computed += 1

  def train_step(self, state, batch):
    jax.debug.callback(self.count)
    return state + batch, {'loss': state.sum()}

  def eval_step(self, state, batch):
    jax.debug.callback(self.count)
    return {'loss': state.sum(), 'count': jax.numpy.ones((), jax.numpy.int32)}


@pytest.mark.parametrize('group', [0, 1, 2])
def test_a_stopped_replica_keeps_its_state_reports_nan_and_alone_is_not_computed_or_evaluated(group):
  from jaxlab.run import replicas
  base = _Counting()
  task = replicas.ReplicatedTask(base, num_replicas=3, shared_batches=True, group=group)
  state = np.array([[1.0], [2.0], [3.0]], np.float32)
  new, metrics = jax.jit(task.train_step)(state, np.ones(1, np.float32), np.array([True, False, True]))
  jax.effects_barrier()
  np.testing.assert_array_equal(new, [[2.0], [2.0], [4.0]])
  assert metrics['loss'][0] == 1.0 and np.isnan(metrics['loss'][1]) and metrics['loss'][2] == 3.0
  if group == 1:  # one replica at a time: lax.cond runs the step of the two active ones only
    assert base.computed == 2
  sums = jax.jit(task.eval_step)(new, {'mask': np.ones(1)}, np.array([True, False, True]))
  jax.effects_barrier()
  assert sums['loss'][0] == 2.0 and np.isnan(sums['loss'][1]) and sums['loss'][2] == 4.0
  np.testing.assert_array_equal(sums['count'], [1, 0, 1])
  if group == 1:
    assert base.computed == 4
