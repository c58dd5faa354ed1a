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


def _assert_replicas_equal_separate_runs(tmp_path, overrides, groups, num_replicas=3):
  singles = [_final_params(tiny_config(**{**overrides, 'seed': overrides['seed'] + r}), str(tmp_path / f'seed{r}'))
             for r in range(num_replicas)]
  for group in groups:
    workdir = str(tmp_path / f'replicas_group{group}')
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
  stacked, summary, singles, workdir = _assert_replicas_equal_separate_runs(tmp_path, overrides, groups=(0,))
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


def test_replicas_in_groups_equal_the_separate_runs(tmp_path):
  """One replica at a time, and groups of two (the second of one replica). 10 steps: past ~10 the MNIST-1D CNN's
  replica 2 leaves float tolerance of its separate run under any program change (a ReLU flips; seen at step 11)."""
  _assert_replicas_equal_separate_runs(tmp_path, {'train.num_steps': 10, 'model.channels': 8, 'seed': 4}, (1, 2))


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
