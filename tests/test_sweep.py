"""Sweeps: the product/zip helpers, naming, core shares, the restartable runner, and results."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, launch

from jaxlab.errors import ConfigError
from jaxlab.launch import results, sweep

TINY_CONFIG = '''
from jaxlab import config as config_lib
from jaxlab.launch.sweep import product


def get_config(arg=None):
  c = config_lib.defaults()
  c.model = dict(name='cnn1d', channels=8, kernel_sizes=(5, 3, 3), strides=(2, 2, 2), padding=1)
  c.data.num_samples, c.data.batch_size, c.data.eval_batch_size = 1000, 40, 200
  c.train.eval_every, c.train.log_every, c.train.checkpoint_every = 0, 5, 5
  return c


def sweep(arg=None):
  return product(('optimizer.learning_rate', {lrs}), ('seed', [0, 1])) + {extra}
'''


def _config_file(tmp_path, lrs=(0.01, 0.03), extra=(), name='tiny.py'):
  path = tmp_path / name
  path.write_text(TINY_CONFIG.format(lrs=list(lrs), extra=list(extra)))
  return str(path)


def test_product_and_zip_build_points_in_order():
  assert sweep.product(('a', [1, 2]), ('b', ['x', 'y'])) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
  paired = sweep.zip(('lr', [0.1, 0.01]), ('wd', [0.0, 1e-4]))
  assert paired == [{'lr': 0.1, 'wd': 0.0}, {'lr': 0.01, 'wd': 1e-4}]
  assert sweep.product(paired, ('seed', [0, 1]))[1:3] == [{'lr': 0.1, 'wd': 0.0, 'seed': 1},
                                                          {'lr': 0.01, 'wd': 1e-4, 'seed': 0}]
  with pytest.raises(ConfigError, match='different lengths'):
    sweep.zip(('a', [1, 2]), ('b', [1]))
  with pytest.raises(ConfigError, match="sweep axis 'a': values must be a list"):
    sweep.product(('a', 'abc'))


def test_point_names_are_safe_distinct_and_short_where_unambiguous():
  names = sweep.short_keys(['optimizer.learning_rate', 'seed', 'model.dropout', 'data.dropout'])
  assert names == {'optimizer.learning_rate': 'learning_rate', 'seed': 'seed', 'model.dropout': 'model.dropout',
                   'data.dropout': 'data.dropout'}
  assert sweep.point_name({'optimizer.learning_rate': 1e-3, 'seed': 2}, names) == 'learning_rate=0.001,seed=2'
  names = sweep.short_keys(['model.name'])
  nasty = [sweep.point_name({'model.name': v}, names) for v in ('a b; rm -rf /', 'a b; rm -rf _', '../..')]
  assert all(set(n) <= set('abcdefghijklmnopqrstuvwxyz0123456789._=,+-') and '/' not in n for n in nasty)
  assert len(set(nasty)) == 3 and nasty[0].startswith('name=a_b__rm_-rf__-')


def test_unknown_or_mistyped_sweep_key_is_an_error_naming_it(tmp_path):
  spec = _config_file(tmp_path, extra=[{'optimizer.learnin_rate': 0.1}])
  with pytest.raises(ConfigError, match="sweep point learnin_rate=0.1: unknown config key 'optimizer.learnin_rate'"):
    sweep.resolve(spec, sweep.load(spec))
  spec = _config_file(tmp_path, extra=[{'train.num_steps': 'many'}])
  with pytest.raises(ConfigError, match="num_steps"):
    sweep.resolve(spec, sweep.load(spec))
  spec = _config_file(tmp_path, extra=[{'seed': 0, 'optimizer.learning_rate': 0.01}])
  with pytest.raises(ConfigError, match='twice'):
    sweep.resolve(spec, sweep.load(spec))
  proc = launch('sweep', f'--config={_config_file(tmp_path, extra=[{"optimizer.lr": 1.0}])}',
                 f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith("error: sweep point lr=1.0: unknown config key 'optimizer.lr'; known keys here: b1, b2,")


def test_shipped_configs_declare_seed_sweeps():
  for name in ('cnn', 'gru', 'mlp', 'logistic'):
    spec = os.path.join(ROOT, 'configs', 'mnist1d', f'{name}.py')
    points = sweep.resolve(spec, sweep.load(spec))
    assert {p['overrides']['seed'] for p in points} >= {0, 1, 2}
    assert {p['overrides']['optimizer.learning_rate'] for p in points} == {3e-3, 1e-2, 3e-2}


def test_sweep_parents_never_import_jax_and_name_the_summary_as_train_does():
  """Why results.SUMMARY_FILE is its own constant: importing train's would start JAX in every sweep parent."""
  from jaxlab.run import train
  assert results.SUMMARY_FILE == train.SUMMARY_FILE
  spec = os.path.join(ROOT, 'configs', 'mnist1d', 'cnn.py')
  code = (f'import sys; from jaxlab.launch import results, search, sweep; sweep.resolve({spec!r}, sweep.load({spec!r})); '
          'print("jax" in sys.modules)')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == 'False'


def test_cores_are_split_evenly_and_shared_when_short():
  assert [sweep.cores_for(s, 2, [0, 1, 2, 3]) for s in range(2)] == [[0, 1], [2, 3]]
  assert [sweep.cores_for(s, 2, [4, 5, 6]) for s in range(2)] == [[4, 5], [6]]
  assert [sweep.cores_for(s, 3, [0, 1]) for s in range(3)] == [[0], [1], [0]]


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity'), reason='CPU affinity is Linux-only')
def test_a_point_process_runs_on_its_cores_only(tmp_path):
  core = sorted(os.sched_getaffinity(0))[-1]
  log = tmp_path / 'log'
  proc = sweep.start([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'], str(log), [core])
  assert proc.wait(timeout=30) == 0
  assert log.read_text().splitlines()[-1] == f'[{core}]'


def _fake_sweep(tmp_path):
  """A sweep workdir as the runner leaves it, with made-up summaries (no training)."""
  points = [{'optimizer.learning_rate': lr, 'seed': s} for lr in (0.01, 0.1) for s in (0, 1)]
  names = sweep.short_keys(points[0])
  manifest = {'config': 'x.py', 'common': {}, 'points': []}
  accuracy = {(0.01, 0): 0.5, (0.01, 1): 0.7, (0.1, 0): 0.8}  # (0.1, 1) never finished
  for p in points:
    name = sweep.point_name(p, names)
    manifest['points'].append({'name': name, 'overrides': p})
    key = (p['optimizer.learning_rate'], p['seed'])
    if key in accuracy:
      (tmp_path / name).mkdir()
      (tmp_path / name / 'summary.json').write_text(json.dumps(
          {'step': 10, 'num_steps': 10, 'preempted': False, 'workdir': name, 'train_seconds': 1.0,
           'steps_trained': 10, 'test_accuracy': accuracy[key], 'test_loss': 1 - accuracy[key]}))
  (tmp_path / 'sweep.json').write_text(json.dumps(manifest))
  return tmp_path


def test_results_table_csv_and_plot(tmp_path):
  workdir = _fake_sweep(tmp_path)
  proc = launch('results', str(workdir))
  assert proc.returncode == 0, proc.stderr
  table = (workdir / 'results.md').read_text()
  assert table in proc.stdout
  lines = table.splitlines()
  assert lines[0] == '| optimizer.learning_rate | seeds | test_accuracy | test_loss |'
  assert lines[2] == '| 0.01 | 2 | 0.6000 ± 0.1414 | 0.4000 ± 0.1414 |'  # sample std of 0.5, 0.7
  assert lines[3] == '| 0.1 | 1 | 0.8000 ± 0.0000 | 0.2000 ± 0.0000 |'
  assert '3 of 4 points finished' in table
  rows = list(csv.DictReader(open(workdir / 'results.csv')))
  assert [(r['optimizer.learning_rate'], r['seed'], r['status'], r['test_accuracy']) for r in rows] == [
      ('0.01', '0', 'done', '0.5'), ('0.01', '1', 'done', '0.7'), ('0.1', '0', 'done', '0.8'), ('0.1', '1', 'missing', '')]
  assert (workdir / 'test_accuracy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('args, message', [
    (['results'], 'usage: launch.py results SWEEP_WORKDIR'),
    (['results', '{tmp}'], 'no sweep.json in'),
    (['results', '{fake}', '--metric=test_f1'], "metric 'test_f1' is not in the runs' summaries"),
])
def test_results_errors_are_one_line(tmp_path, args, message):
  (tmp_path / 'fake').mkdir()
  fake = _fake_sweep(tmp_path / 'fake')
  proc = launch(*[a.format(tmp=tmp_path, fake=fake) for a in args])
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ') and message in proc.stderr


def test_sweep_runs_every_point_reports_failures_and_restarts(tmp_path):
  """Two learning rates x two seeds, plus a point that fails; then a restart after an 'interruption'."""
  spec = _config_file(tmp_path, extra=[{'optimizer.learning_rate': 0.01, 'seed': 9, 'model.name': 'nope'}])
  workdir = tmp_path / 'sweep'
  args = ['sweep', f'--config={spec}', f'--workdir={workdir}', '--parallel=2', '--config.train.num_steps=10']
  first = launch(*args, env={**os.environ, 'JAXLAB_CACHE_DIR': str(tmp_path / 'cache')})
  assert first.returncode == 1, first.stderr
  assert 'sweep: 5 points, 0 already finished, 5 to run (2 at a time' in first.stdout
  assert first.stdout.count(' done ') == 4
  failed = 'learning_rate=0.01,seed=9,name=nope'
  assert f'FAILED {failed} (exit 2)' in first.stderr
  assert "unknown model.name 'nope'" in first.stderr  # the tail of its log, kept in its workdir
  assert "unknown model.name 'nope'" in (workdir / failed / 'launch.log').read_text()
  assert first.stderr.strip().splitlines()[-1] == 'error: 1 sweep point(s) failed (their logs are above); the others are in the table'
  for lr in (0.01, 0.03):
    for seed in (0, 1):
      point = workdir / f'learning_rate={lr},seed={seed}'
      config = json.loads((point / 'config.json').read_text())
      assert (config['optimizer']['learning_rate'], config['seed'], config['train']['num_steps']) == (lr, seed, 10)
      assert json.loads((point / 'summary.json').read_text())['step'] == 10
  table = (workdir / 'results.md').read_text()
  assert '| 0.03 | None | 2 |' in table  # the failed point's extra key is absent (None) in the others
  assert '4 of 5 points finished' in table

  # An interrupted point: its final checkpoint and summary are gone, the step-5 checkpoint remains.
  interrupted = workdir / 'learning_rate=0.03,seed=1'
  (interrupted / 'summary.json').unlink()
  subprocess.run(['rm', '-r', str(interrupted / 'checkpoints' / '10')], check=True)
  again = launch(*args, env={**os.environ, 'JAXLAB_CACHE_DIR': str(tmp_path / 'cache')})
  assert again.returncode == 1
  assert 'sweep: 5 points, 3 already finished, 2 to run' in again.stdout
  assert 'Resuming from step 5' in (interrupted / 'launch.log').read_text()
  assert json.loads((interrupted / 'summary.json').read_text())['steps_trained'] == 5

  # The same sweep asked for fewer steps: refused in one line before anything runs or is rewritten.
  manifest = (workdir / 'sweep.json').read_text()
  changed = launch(*args[:-1], '--config.train.num_steps=8')
  assert changed.returncode == 2 and 'Traceback' not in changed.stderr
  assert changed.stderr.strip().splitlines() == [
      f'error: sweep point learning_rate=0.01,seed=0 in {workdir} ran with another config: '
      'train.num_steps (10 -> 8); a run can be continued to more steps, not fewer. Use another --workdir for the '
      'changed sweep.']
  assert (workdir / 'sweep.json').read_text() == manifest and 'num_steps=8' not in (interrupted / 'launch.log').read_text()

  # More steps (a constant learning rate): every point goes on from its last checkpoint.
  longer = launch(*args[:-1], '--config.train.num_steps=12', env={**os.environ, 'JAXLAB_CACHE_DIR': str(tmp_path / 'cache')})
  assert longer.returncode == 1 and 'sweep: 5 points, 0 already finished, 5 to run' in longer.stdout
  for lr in (0.01, 0.03):
    for seed in (0, 1):
      point = workdir / f'learning_rate={lr},seed={seed}'
      assert json.loads((point / 'summary.json').read_text())['steps_trained'] == 2
      assert 'Resuming from step 10: 12 steps' in (point / 'launch.log').read_text()


def test_a_run_that_stopped_early_is_finished(tmp_path):
  summary = {'step': 300, 'num_steps': 1000, 'preempted': False, 'stopped_early': True}
  (tmp_path / 'summary.json').write_text(json.dumps(summary))
  assert sweep.is_finished(str(tmp_path), 1000)
  (tmp_path / 'summary.json').write_text(json.dumps({**summary, 'stopped_early': False}))
  assert not sweep.is_finished(str(tmp_path), 1000)
