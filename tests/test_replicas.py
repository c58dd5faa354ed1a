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


def test_replica_r_equals_the_run_with_seed_plus_r(tmp_path):
  overrides = {'train.num_steps': 30, 'model.channels': 8, 'seed': 4}
  stacked, summary = _final_params(tiny_config(num_replicas=3, **overrides), str(tmp_path / 'replicas'))
  assert len(summary['test_accuracy_replicas']) == 3
  singles = []
  for r in range(3):
    single, single_summary = _final_params(tiny_config(**{**overrides, 'seed': 4 + r}), str(tmp_path / f'seed{r}'))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked), strict=True):
      np.testing.assert_allclose(a, b[r], rtol=1e-4, atol=1e-5)
    assert abs(single_summary['test_accuracy'] - summary['test_accuracy_replicas'][r]) <= 0.005
    singles.append(single_summary['test_accuracy'])
  # The reported value is the mean over replicas: that of the three separate runs (30 steps).
  assert summary['test_accuracy'] == pytest.approx(sum(singles) / 3, abs=0.005)
  # Each replica's accuracy is also its confusion matrix's diagonal share (eval_test.json, counted apart).
  with open(os.path.join(str(tmp_path / 'replicas'), 'eval_test.json')) as f:
    for r, report in enumerate(json.load(f)['replicas']):
      confusion = np.array(report['confusion_matrix'])
      assert summary['test_accuracy_replicas'][r] == pytest.approx(np.trace(confusion) / confusion.sum())
  # The replicas really differ from each other (own init and data order).
  first_kernel = jax.tree.leaves(stacked)[0]
  assert not np.allclose(first_kernel[0], first_kernel[1])


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
