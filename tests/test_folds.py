"""k-fold cross-validation: folds partition the training set, are stratified and seed-independent;
`launch.py cv` trains the folds as replicas that equal the separate runs; bad input is one line."""

import json
import re

import jax
import numpy as np
import pytest
from conftest import launch, tiny_config

from jaxlab import data
from jaxlab.data import folds
from jaxlab.data.vision import data_config
from jaxlab.errors import ConfigError
from jaxlab.evaluators import cv
from jaxlab.run import train


def test_folds_partition_and_stratify_hand_counted_labels():
  labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [10, 7, 4]))
  validation = [folds.rows(labels, 3, i)[1] for i in range(3)]
  assert sorted(np.concatenate(validation).tolist()) == list(range(21))  # disjoint and covering
  for i in range(3):
    train_rows, validation_rows = folds.rows(labels, 3, i)
    assert sorted(np.concatenate([train_rows, validation_rows]).tolist()) == list(range(21))
    assert len(validation_rows) == 7  # 21 / 3
    counts = np.bincount(labels[validation_rows], minlength=3)
    # 10, 7 and 4 examples over 3 folds: 3 or 4, 2 or 3, 1 or 2 per fold.
    assert 3 <= counts[0] <= 4 and 2 <= counts[1] <= 3 and 1 <= counts[2] <= 2


def _rows(batch):
  return sorted(map(bytes, np.concatenate([batch['x'].reshape(len(batch['x']), -1).view(np.uint8),
                                           batch['y'][:, None].astype(np.int64).view(np.uint8)], 1)))


def _split(source, name):
  if name == 'train':
    return source.splits['train']
  batches = list(source.eval_batches(name))
  return {k: np.concatenate([b[k][b['mask'] > 0] for b in batches]) for k in ('x', 'y')}


def test_mnist1d_folds_cover_the_training_set_and_leave_the_test_set_alone():
  base = tiny_config('mlp').data
  whole = data.make_source(base, seed=0)
  everything, k = _rows(_split(whole, 'train')), 4
  seen = []
  for fold in range(k):
    cfg = base.copy_and_resolve_references()
    cfg.folds, cfg.fold = k, fold
    source = data.make_source(cfg, seed=fold)
    held_out = _split(source, 'validation')
    assert sorted(_rows(_split(source, 'train')) + _rows(held_out)) == everything
    np.testing.assert_array_equal(_split(source, 'test')['x'], _split(whole, 'test')['x'])
    counts = np.bincount(held_out['y'], minlength=10)
    totals = np.bincount(_split(whole, 'train')['y'], minlength=10)
    assert np.all(np.abs(counts - totals / k) < 1)  # each class's share, to within one example
    seen += _rows(held_out)
  assert sorted(seen) == everything  # the validation folds are disjoint and cover the training set


def test_folds_do_not_depend_on_the_run_seed():
  cfg = tiny_config('mlp').data
  cfg.folds, cfg.fold = 3, 1
  a, b = (_split(data.make_source(cfg, seed=s), 'validation') for s in (0, 7))
  np.testing.assert_array_equal(a['x'], b['x'])


def test_image_folds_through_grain_records():
  cfg = data_config('mnist', name='standin', batch_size=8, eval_batch_size=8, folds=2, fold=1)
  source = data.make_source(cfg, seed=0)  # stand-in MNIST: 16 training images
  validation = list(source.eval_batches('validation'))
  assert sum(int(b['mask'].sum()) for b in validation) == 8
  train_batch = next(source.train_batches(0))
  assert train_batch['x'].shape == (8, 28, 28, 1)


def test_train_fraction_keeps_a_stratified_nested_part_of_each_class():
  labels = np.repeat([0, 1, 2], [100, 50, 10])
  tenth, half = folds.subset(labels, 0.1), folds.subset(labels, 0.5)
  assert np.bincount(labels[tenth]).tolist() == [10, 5, 1] and np.bincount(labels[half]).tolist() == [50, 25, 5]
  assert set(tenth) <= set(half) and np.all(np.diff(tenth) > 0)
  assert np.array_equal(folds.subset(labels, 1.0), np.arange(160))
  with pytest.raises(ConfigError, match=re.escape('data.train_fraction must be in (0, 1], got 0.0')):
    folds.subset(labels, 0.0)
  cfg = data_config('mnist', name='standin', batch_size=4, eval_batch_size=8, train_fraction=0.5)
  whole = data.make_source(data_config('mnist', name='standin', batch_size=4, eval_batch_size=8), seed=0)
  train = whole.splits['train']  # stand-in MNIST: two batches of training images
  counts = np.bincount(train.read(np.arange(len(train)))['label'])
  assert len(data.make_source(cfg, seed=0).splits['train']) == sum(max(1, round(n / 2)) for n in counts if n)


@pytest.mark.parametrize('overrides, message', [
    ({'data.folds': 1}, 'data.folds must be 0 (off) or in [2, 800] for a training split of 800 examples, got 1'),
    ({'data.folds': 5, 'data.fold': 5}, 'data.fold must be in [0, 5) for data.folds 5, got 5'),
    ({'data.folds': 5, 'data.fold': -1}, '(-1, every fold at once, is for `launch.py cv`)'),
    ({'data.folds': 5, 'data.validation_size': 100}, 'both carve a validation split'),
])
def test_bad_fold_settings_are_one_line(overrides, message):
  config = tiny_config('mlp', **overrides)
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
    data.make_source(config.data, seed=0)


def _final(config, workdir):
  captured = {}
  summary = train.train(config, workdir, hooks=[lambda step, state: captured.update(p=jax.device_get(state.params))])
  return captured['p'], summary


def test_cv_trains_each_fold_as_the_separate_run_would(tmp_path):
  config = tiny_config('mlp', **{'seed': 3, 'train.num_steps': 30})
  captured = {}
  original = train.train

  def spy(cfg, workdir, **kwargs):
    captured['summary'] = original(cfg, workdir, hooks=[lambda s, st: captured.update(p=jax.device_get(st.params))],
                                   **kwargs)
    return captured['summary']

  train.train = spy
  try:
    report = cv.run(config, 2, str(tmp_path / 'cv'))
  finally:
    train.train = original
  validation = report['metrics']['validation_accuracy']
  for fold in range(2):
    single = tiny_config('mlp', **{'seed': 3 + fold, 'train.num_steps': 30, 'data.folds': 2, 'data.fold': fold})
    params, summary = _final(single, str(tmp_path / f'fold{fold}'))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(captured['p']), strict=True):
      np.testing.assert_allclose(a, b[fold], rtol=1e-4, atol=1e-5)
    assert abs(summary['validation_accuracy'] - validation['folds'][fold]) <= 0.005
  # 800 training examples (1000 at train_split 0.8) in 2 folds: 400 validation examples each.
  assert captured['summary']['validation_accuracy_replicas'] == validation['folds']
  assert validation['std'] == pytest.approx(abs(validation['folds'][0] - validation['folds'][1]) / np.sqrt(2))
  saved = json.loads((tmp_path / 'cv' / 'cv.json').read_text())
  assert saved['folds'] == 2 and saved['metrics']['validation_accuracy'] == validation


def test_cv_command_prints_the_table(tmp_path):
  proc = launch('cv', '--config=configs/mnist1d/mlp.py', '--folds=2', f'--workdir={tmp_path}',
                '--config.data.num_samples=500', '--config.train.num_steps=10', '--config.train.eval_every=10',
                '--config.data.batch_size=20', '--config.data.eval_batch_size=100', timeout=240)
  assert proc.returncode == 0, proc.stderr
  report = json.loads((tmp_path / 'cv.json').read_text())
  entry = report['metrics']['validation_accuracy']
  assert f'| validation_accuracy | {entry["mean"]:.4f} ± {entry["std"]:.4f} |' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--folds=1'], '--folds must be at least 2, got 1'),
    (['--config.num_replicas=2'], 'cv makes one replica per fold; leave num_replicas at 1 (got 2)'),
    (['--config=configs/shakespeare_char/gpt.py'], "data 'text' has no k-fold split"),
    (['--config.data.validation_size=100'], 'leave data.validation_size at 0 (got 100)'),
])
def test_cv_bad_input_is_one_line(tmp_path, args, message):
  proc = launch('cv', '--config=configs/mnist1d/mlp.py', f'--workdir={tmp_path}', *args, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr and proc.stdout == ''  # not the config first
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith('error: ') and message in line


def test_cv_stopped_by_a_signal_leaves_the_last_report(tmp_path, monkeypatch):
  (tmp_path / 'cv.json').write_text('{"folds": 2, "metrics": {"validation_accuracy": {"mean": 0.9}}}')
  before = (tmp_path / 'cv.json').read_text()
  stopped = {'step': 4, 'preempted': True, 'validation_accuracy_replicas': []}  # what train returns when stopped
  monkeypatch.setattr(train, 'train', lambda *args, **kwargs: stopped)
  report = cv.run(tiny_config('mlp'), 2, str(tmp_path))
  assert report['preempted'] and report['metrics'] == {}
  assert (tmp_path / 'cv.json').read_text() == before
