"""Optuna search: space helpers, the pruning feed, a tiny real search that restarts, and errors."""

import json
import os
import signal
import subprocess
import sys

import optuna
import pytest
from conftest import LAUNCH, ROOT, launch

from jaxlab.errors import ConfigError
from jaxlab.launch import search

CNN = os.path.join(ROOT, 'configs', 'mnist1d', 'cnn.py')
TINY = ['--config.train.num_steps=40', '--config.train.eval_every=10', '--config.train.log_every=10',
        '--config.train.checkpoint_every=20', '--config.data.num_samples=1000', '--config.data.validation_size=200',
        '--config.data.batch_size=40', '--config.data.eval_batch_size=200']


def test_space_helpers_become_optuna_distributions():
  params = {'lr': search.loguniform(1e-4, 1e-1), 'dropout': search.uniform(0, 0.5),
            'depth': search.intrange(1, 4), 'width': search.choice([8, 16])}
  d = search.distributions(params, optuna)
  assert d['lr'] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
  assert d['dropout'] == optuna.distributions.FloatDistribution(0.0, 0.5)
  assert d['depth'] == optuna.distributions.IntDistribution(1, 4)
  assert d['width'] == optuna.distributions.CategoricalDistribution((8, 16))
  assert search.corners(params) == [{'lr': 1e-4, 'dropout': 0.0, 'depth': 1, 'width': 8},
                                    {'lr': 1e-1, 'dropout': 0.5, 'depth': 4, 'width': 16}]
  for bad, message in [(lambda: search.loguniform(0, 1), 'low > 0'), (lambda: search.uniform(2, 1), 'low < high'),
                       (lambda: search.intrange(1, 2.5), 'int bounds'), (lambda: search.choice([(1, 2)]), 'choice()')]:
    with pytest.raises(ConfigError, match=message):
      bad()


def test_shipped_cnn_search_splits_params_from_fixed_overrides():
  params, fixed = search.load(CNN)
  assert set(params) == {'optimizer.learning_rate', 'model.channels'}
  assert fixed['data.validation_size'] > 0  # tuning reads a validation split, never the test set


def test_metric_must_not_be_a_test_metric():
  assert search.split_metric('validation_accuracy') == ('validation', 'accuracy')
  with pytest.raises(ConfigError, match='must not tune on the test set'):
    search.split_metric('test_accuracy')


def test_read_metric_takes_complete_lines_of_the_split(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [{'step': 10, 'split': 'train', 'accuracy': 0.1}, {'step': 10, 'split': 'validation', 'accuracy': 0.5},
           {'step': 10, 'split': 'test', 'accuracy': 0.9}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in lines) + '{"step": 20, "spl')  # a line being written
  offset, values = search.read_metric(str(path), 0, 'validation', 'accuracy')
  assert values == [(10, 0.5)] and offset == len(path.read_bytes()) - len('{"step": 20, "spl')
  with open(path, 'a') as f:
    f.write('it": "validation", "accuracy": 0.6}\n')
  assert search.read_metric(str(path), offset, 'validation', 'accuracy')[1] == [(20, 0.6)]
  assert search.read_metric(str(tmp_path / 'absent'), 0, 'validation', 'accuracy') == (0, [])


class _Proc:
  def __init__(self):
    self.signals = []

  def send_signal(self, signum):
    self.signals.append(signum)


def test_pruner_fed_from_metrics_sends_sigterm(tmp_path):
  """Five finished trials climb to 0.9; a sixth that stays at 0.1 is pruned at its first report."""
  study = optuna.create_study(direction='maximize', pruner=optuna.pruners.MedianPruner(n_startup_trials=5))
  for _ in range(5):
    trial = study.ask()
    search.feed(trial, [(10, 0.5), (20, 0.9)], set(), _Proc())
    study.tell(trial, 0.9)
  good, bad = _Proc(), _Proc()
  trial = study.ask()
  assert search.feed(trial, [(10, 0.6), (20, 0.95)], set(), good) is None and good.signals == []
  reported = {10}  # a resumed run: step 10 was reported before the interruption
  assert search.feed(study.ask(), [(10, 0.1), (20, 0.1), (30, 0.1)], reported, bad) == 20
  assert bad.signals == [signal.SIGTERM] and reported == {10, 20}


def test_tiny_search_completes_writes_best_and_continues(tmp_path):
  workdir = tmp_path / 'search'
  args = ['search', f'--config={CNN}', f'--workdir={workdir}', '--config.model.channels=8', *TINY]
  env = {**os.environ, 'JAXLAB_CACHE_DIR': str(tmp_path / 'cache')}
  first = launch(*args, '--trials=3', env=env)
  assert first.returncode == 0, first.stderr
  assert 'search: 0 of 3 trials finished, 0 to resume, 3 new; validation_accuracy (maximize)' in first.stdout
  assert first.stdout.count(' done ') == 3 and (workdir / 'study.db').exists()
  study = optuna.load_study(study_name=search.STUDY_NAME, storage=f'sqlite:///{workdir / "study.db"}')
  values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  best = json.loads((workdir / 'best.json').read_text())
  assert len(values) == 3 and best['value'] == max(values) and best['metric'] == 'validation_accuracy'
  assert set(best['params']) == {'optimizer.learning_rate'}  # model.channels: fixed by the command line
  summary = json.loads((workdir / f'trial-{best["trial"]:04d}' / 'summary.json').read_text())
  assert summary['validation_accuracy'] == best['value']
  assert '3 of 3 points finished' in (workdir / 'results.md').read_text()

  again = launch(*args, '--trials=4', env=env)
  assert again.returncode == 0, again.stderr
  assert 'search: 3 of 4 trials finished, 0 to resume, 1 new' in again.stdout and again.stdout.count(' done ') == 1
  assert len(optuna.load_study(study_name=search.STUDY_NAME, storage=f'sqlite:///{workdir / "study.db"}').trials) == 4


@pytest.mark.parametrize('extra, message', [
    (['--metric=test_accuracy'], 'must not tune on the test set'),
    (['--config.data.validation_size=0'], 'needs a validation split: set data.validation_size'),
])
def test_search_errors_are_one_line(tmp_path, extra, message):
  proc = launch('search', f'--config={CNN}', f'--workdir={tmp_path}', *extra)
  [line] = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and line.startswith('error: ') and message in line


def test_missing_optuna_is_a_one_line_error(tmp_path):
  hide = f"import runpy, sys; sys.modules['optuna'] = None; sys.argv = {[LAUNCH, 'search', f'--config={CNN}', f'--workdir={tmp_path}']!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
  proc = subprocess.run([sys.executable, '-c', hide], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: search needs optuna, an optional extra: pip install -e '.[search]'"
