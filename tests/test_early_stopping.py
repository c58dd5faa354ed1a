"""Early stopping on a validation metric keeps, restores and reports the best checkpoint."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.run import early_stopping, train


def _config(**overrides):
  config = tiny_config(**{'data.validation_size': 200, 'train.num_steps': 120, 'train.eval_every': 5,
                          'train.log_every': 5, 'train.checkpoint_every': 0, 'model.channels': 8, **overrides})
  config.unlock()
  config.train.early_stopping_metric = 'validation_accuracy'
  config.train.early_stopping_mode = 'max'
  config.train.early_stopping_patience = 3
  config.lock()
  return config


def _validation_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == 'validation']


def test_early_stopping_restores_the_best_validation_checkpoint(tmp_path):
  workdir = str(tmp_path / 'run')
  # 300 steps: the validation accuracy levels off well before the end (it stopped at 165 when written).
  summary = train.train(_config(**{'train.num_steps': 300}), workdir)
  records = _validation_records(workdir)
  best = max(records, key=lambda r: r['accuracy'])  # max() keeps the first of ties, as the tracker does
  assert summary['best_step'] == best['step']
  assert summary['best_validation_accuracy'] == best['accuracy']
  # The final report is computed from the restored best state, not the last one.
  assert summary['validation_accuracy'] == pytest.approx(best['accuracy'])
  assert summary['stopped_early']
  assert summary['step'] == best['step'] + 3 * 5  # patience 3 evaluations after the best
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    assert json.load(f)['step'] == best['step']


def test_the_test_split_cannot_drive_early_stopping(tmp_path):
  with pytest.raises(ConfigError, match='never the test set'):
    early_stopping.BestCheckpoint(str(tmp_path), 'test_accuracy', 'max', 1, 5)


def test_patience_counts_evaluations_since_the_best(tmp_path):
  tracker = early_stopping.BestCheckpoint(str(tmp_path), 'validation_loss', 'min', 2, 10)
  assert tracker.update(30, {'validation': {'loss': 0.5}}, {'w': np.zeros(2)})
  assert not tracker.should_stop(40) and tracker.should_stop(50)
  assert tracker._better(np.array([0.4])) and not tracker._better(np.array([0.5]))
  tracker.close()


def test_the_best_value_is_read_from_the_checkpoint_itself_never_from_a_separate_record(tmp_path):
  state = {'w': np.arange(3.0)}
  tracker = early_stopping.BestCheckpoint(str(tmp_path), 'validation_accuracy', 'max', 0, 5)
  assert tracker.update(10, {'validation': {'accuracy': 0.5}}, state)
  assert not tracker.update(15, {'validation': {'accuracy': 0.4}}, {'w': np.zeros(3)})
  tracker.save(15, {})
  tracker.close()
  # A record such as older versions wrote beside the checkpoint, gone stale: it must not matter.
  (tmp_path / 'best' / 'best.json').write_text(json.dumps({'step': 5, 'value': 0.3, 'metric': 'validation_accuracy'}))
  reopened = early_stopping.BestCheckpoint(str(tmp_path), 'validation_accuracy', 'max', 0, 5)
  assert (reopened.step, reopened.value) == (10, 0.5)
  # So a worse value (0.4 > the stale 0.3, < the true 0.5) does not overwrite the only best checkpoint.
  assert not reopened.update(20, {'validation': {'accuracy': 0.4}}, {'w': np.zeros(3)})
  reopened.save(20, {})  # nothing new to write
  np.testing.assert_array_equal(reopened.restore({'w': np.zeros(3)})['w'], np.arange(3.0))
  reopened.close()


@pytest.mark.parametrize('mode,values', [('max', (0.5, 0.5, 0.4)), ('min', (0.5, 0.5, 0.6))])
def test_a_tie_does_not_replace_the_earlier_best(tmp_path, mode, values):
  tracker = early_stopping.BestCheckpoint(str(tmp_path), 'validation_loss', mode, 2, 5)
  improved = [bool(tracker.update(step, {'validation': {'loss': v}}, {'w': np.full(2, step, np.float32)}))
              for step, v in zip((5, 10, 15), values)]
  assert improved == [True, False, False] and tracker.step == 5
  assert tracker.should_stop(15)  # two evaluations (10, 15) without a strict improvement
  tracker.close()


def _loss_stopping(**overrides):
  config = tiny_config('mlp', **{'data.validation_size': 200, 'train.num_steps': 200, 'train.eval_every': 5,
                                 'train.log_every': 5, 'train.checkpoint_every': 0, 'data.num_samples': 600, 'seed': 4,
                                 **overrides})
  config_lib.set_value(config, 'train.early_stopping_metric', 'validation_loss')
  config_lib.set_value(config, 'train.early_stopping_mode', 'min')
  config_lib.set_value(config, 'train.early_stopping_patience', 2)
  return config


def test_each_replica_stops_on_its_own_like_the_separate_run_with_its_seed(tmp_path):
  params_at = {}
  keep = lambda step, state: params_at.update({step: jax.device_get(state.params)})
  summary = train.train(_loss_stopping(num_replicas=3), str(tmp_path / 'replicas'), hooks=[keep])
  best_steps, stops = summary['best_step_replicas'], []
  for r in range(3):
    single = train.train(_loss_stopping(seed=4 + r), str(tmp_path / f'seed{r}'))
    assert best_steps[r] == single['best_step'] and single['stopped_early']
    assert summary['best_validation_loss_replicas'][r] == pytest.approx(single['best_validation_loss'], rel=1e-4)
    assert summary['test_accuracy_replicas'][r] == pytest.approx(single['test_accuracy'], abs=0.005)
    assert summary['test_loss_replicas'][r] == pytest.approx(single['test_loss'], rel=1e-4)
    # Stopped at the evaluation where its patience ran out: from then on its parameters stay as they are.
    stops.append(single['step'])
    frozen = [jax.tree.leaves(params_at[step]) for step in (stops[r], summary['step'])]
    for a, b in zip(*frozen):
      np.testing.assert_array_equal(a[r], b[r])
  assert summary['step'] == max(stops) and min(stops) < max(stops)  # the run ends with the last replica's stop
