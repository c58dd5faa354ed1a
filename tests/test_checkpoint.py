"""Checkpoints verify their content, a corrupt newest one falls back to an older one, and resume
compares the checkpoint's own config."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, tiny_config

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.run import checkpoint, train
from jaxlab.run import program as program_lib


def _state(seed=0):
  rng = np.random.default_rng(seed)
  return {'w': rng.normal(size=(64, 96)).astype(np.float32), 'b': rng.normal(size=96).astype(np.float32),
          'step': np.int32(7), 'key': np.array([3, 4], np.uint32)}


def _data_files(step_dir):
  """The array data files of a saved state (orbax/ocdbt keeps them in folders named d), largest first."""
  found = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(step_dir, 'state')) for f in files
           if os.path.basename(root) == 'd']
  return sorted(found, key=os.path.getsize, reverse=True)


def _saved(directory, steps=(1, 2)):
  ckpt = checkpoint.Checkpointer(str(directory), keep=5, warn=lambda text: None)
  for step in steps:
    ckpt.save(step, _state(step), {'seed': 0})
  ckpt.close()
  return directory


def _restore(directory, warnings):
  ckpt = checkpoint.Checkpointer(str(directory), keep=5, warn=warnings.append)
  try:
    return ckpt.restore_newest_good(jax.tree.map(np.zeros_like, _state()), lambda step, config: None)
  finally:
    ckpt.close()


@pytest.mark.parametrize('dtype', [np.float32, np.int32, np.uint8, jnp.bfloat16, np.bool_])
def test_checksum_changes_with_any_single_bit(dtype):
  values = np.random.default_rng(0).integers(0, 2, size=300).astype(dtype)
  reference = checkpoint.checksum({'x': values})
  raw = values.view(np.uint8)
  for bit in np.random.default_rng(1).choice(raw.size * 8, size=40, replace=False):
    flipped = raw.copy()
    flipped[bit // 8] ^= np.uint8(1 << (bit % 8))
    if dtype == np.bool_ and flipped[bit // 8] > 1:
      continue  # not a valid bool
    checksum = checkpoint.checksum({'x': flipped.view(values.dtype)})
    assert checksum != reference, f'bit {bit} went unnoticed'
  # Swapping two different values changes it too (a plain sum would not see it).
  swapped = values.copy()
  i, j = np.flatnonzero(values != values[0])[0], 0
  swapped[[i, j]] = swapped[[j, i]]
  assert checkpoint.checksum({'x': swapped}) != reference


def test_a_bit_flip_anywhere_in_the_data_is_caught_or_harmless(tmp_path):
  original = _saved(tmp_path / 'original')
  data = _data_files(original / '2')
  assert data, 'no data files found'
  caught_by_checksum = 0
  for position in np.linspace(0, os.path.getsize(data[0]) - 1, 12).astype(int):
    copy = tmp_path / f'flip{position}'
    shutil.copytree(original, copy)
    path = _data_files(copy / '2')[0]
    with open(path, 'r+b') as f:
      f.seek(position)
      byte = f.read(1)[0]
      f.seek(position)
      f.write(bytes([byte ^ 0x10]))
    warnings = []
    step, state, _ = _restore(copy, warnings)
    if step == 2:  # the flip hit bytes that do not change the content: it must then be bitwise the saved one
      assert not warnings
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(_state(2))):
        np.testing.assert_array_equal(a, b)
    else:  # never a silently different state: step 2 is refused, moved aside, and step 1 restored intact
      assert step == 1 and len(warnings) == 1 and 'checkpoint 2' in warnings[0]
      caught_by_checksum += 'checksum mismatch' in warnings[0]
      np.testing.assert_array_equal(state['w'], _state(1)['w'])
      assert os.listdir(copy) == ['1'] and os.listdir(tmp_path / 'corrupt')[0].startswith('2-')
    shutil.rmtree(tmp_path / 'corrupt', ignore_errors=True)
  assert caught_by_checksum > 0, 'no flip reached the array data; the test is not testing the checksum'


@pytest.mark.parametrize('damage', ['truncate', 'delete'])
def test_a_truncated_or_missing_data_file_falls_back_to_the_step_before(tmp_path, damage):
  directory = _saved(tmp_path / 'ckpt')
  for path in _data_files(directory / '2'):
    if damage == 'truncate':
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    else:
      os.remove(path)
  warnings = []
  step, state, _ = _restore(directory, warnings)
  assert step == 1 and len(warnings) == 1 and 'checkpoint 2' in warnings[0] and 'moved it aside' in warnings[0]
  np.testing.assert_array_equal(state['b'], _state(1)['b'])
  assert sorted(os.listdir(tmp_path / 'corrupt'))[0].startswith('2-')


def test_no_intact_checkpoint_is_one_line_saying_so_and_nothing_is_moved(tmp_path):
  directory = _saved(tmp_path / 'ckpt')
  for step in ('1', '2'):
    for path in _data_files(directory / step):
      os.remove(path)
  with pytest.raises(checkpoint.CorruptCheckpointError, match=r'none of the 2 checkpoint\(s\) .* restores'):
    _restore(directory, [])
  assert sorted(os.listdir(directory)) == ['1', '2'] and not (tmp_path / 'corrupt').exists()


def test_a_failure_every_checkpoint_shares_moves_none_aside(tmp_path):
  directory = _saved(tmp_path / 'ckpt')
  ckpt = checkpoint.Checkpointer(str(directory), keep=5, warn=lambda text: pytest.fail(text))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  # The state of a changed model, say, as train restores it: arrays of a shape and a sharding.
  other_shape = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=device),
                             dict(_state(), w=np.zeros((64, 95), np.float32)))
  try:
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r'^checkpoint 2 in .*ckpt does not fit the model: w has shape \(64, 96\) saved, '
                             r'\(64, 95\) now$'):
      ckpt.restore_newest_good(other_shape, lambda step, config: None)
  finally:
    ckpt.close()
  assert sorted(os.listdir(directory)) == ['1', '2'] and not (tmp_path / 'corrupt').exists()
  step, state, _ = _restore(directory, [])  # the work is all there
  assert step == 2 and np.array_equal(state['w'], _state(2)['w'])


def _final_params(config, workdir):
  captured = {}
  train.train(config, workdir, hooks=[lambda step, state: captured.update(params=jax.device_get(state.params))])
  return captured['params']


def test_a_run_whose_newest_checkpoint_is_corrupt_resumes_from_the_one_before(tmp_path, capsys):
  config = tiny_config(**{'train.num_steps': 20, 'train.checkpoint_every': 10})
  workdir = tmp_path / 'run'
  reference = _final_params(config, str(workdir))  # the uninterrupted run, whose newest checkpoint is then damaged
  for path in _data_files(workdir / 'checkpoints' / '20'):
    with open(path, 'r+b') as f:
      f.truncate(10)
  capsys.readouterr()
  step, _, _ = program_lib.restore_checkpoint(config, str(workdir))  # a reader (evaluate, attack) moves nothing
  assert step == 10 and 'left it; reading step 10' in capsys.readouterr().err
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20'] and not (workdir / 'corrupt').exists()
  resumed = _final_params(config, str(workdir))
  captured = capsys.readouterr()
  assert 'checkpoint 20' in captured.err and 'resuming from step 10' in captured.err
  assert 'Resuming from step 10' in captured.out
  # Steps 11-20 trained again from the intact step 10: bitwise the uninterrupted run (20 steps, CPU).
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  assert os.listdir(workdir / 'corrupt')[0].startswith('20-')


def test_a_run_none_of_whose_checkpoints_restores_is_refused_until_restarted(tmp_path):
  config = tiny_config(**{'train.num_steps': 20, 'train.checkpoint_every': 10})
  workdir = tmp_path / 'run'
  train.train(config, str(workdir))
  for step in ('10', '20'):
    for path in _data_files(workdir / 'checkpoints' / step):
      os.remove(path)
  with pytest.raises(checkpoint.CorruptCheckpointError, match=r'none of the 2 .* nothing was moved\. Fix the cause, '
                                                              r'or pass --restart'):
    train.train(config, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20'] and not (workdir / 'corrupt').exists()
  assert train.train(config, str(workdir), restart=True)['steps_trained'] == 20  # the advice works


def test_resume_compares_the_checkpoints_own_config_when_config_json_is_gone(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train(tiny_config(), workdir)
  os.remove(os.path.join(workdir, 'config.json'))
  with pytest.raises(ConfigError, match=r'checkpoint of step 20 .* different config: optimizer\.learning_rate'):
    train.train(tiny_config(**{'optimizer.learning_rate': 0.5}), workdir)
  # Another model shape is the same one line, not an orbax shape traceback.
  with pytest.raises(ConfigError, match=r'model\.channels \(25 -> 9\)'):
    train.train(tiny_config(**{'model.channels': 9}), workdir)


def test_a_run_continued_to_more_steps_is_the_run_started_with_them(tmp_path, capsys):
  # The best state (early stopping, patience 0: keep the best) carries over too: the longer run's best is
  # chosen among all its evaluations, those before the resume included.
  watched = {'data.validation_size': 200, 'train.early_stopping_metric': 'validation_loss',
             'train.early_stopping_mode': 'min', 'train.early_stopping_patience': 0}
  longer = tiny_config(**{'train.num_steps': 30, **watched})
  reference = _final_params(longer, str(tmp_path / 'straight'))
  reference_summary = json.loads((tmp_path / 'straight' / 'summary.json').read_text())
  workdir = str(tmp_path / 'continued')
  train.train(tiny_config(**{'train.num_steps': 20, **watched}), workdir)
  capsys.readouterr()
  continued = _final_params(longer, workdir)
  assert 'Resuming from step 20: 30 steps' in capsys.readouterr().out
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(continued), strict=True):
    np.testing.assert_array_equal(a, b)  # CPU, 30 steps: bitwise
  summary = json.loads((tmp_path / 'continued' / 'summary.json').read_text())
  for key in ('best_step', 'best_validation_loss', 'test_loss', 'validation_loss'):
    assert summary[key] == reference_summary[key], key
  with pytest.raises(ConfigError, match=r'train\.num_steps \(30 -> 10\); a run can be continued to more steps, not fewer'):
    train.train(tiny_config(**{'train.num_steps': 10, **watched}), workdir)


def test_a_run_stopped_by_its_rule_stays_stopped_when_given_more_steps(tmp_path):
  # 'min' of validation accuracy: the first evaluation is best and the rule stops the run two evaluations on.
  rule = {'data.validation_size': 200, 'train.early_stopping_metric': 'validation_accuracy',
          'train.early_stopping_mode': 'min', 'train.early_stopping_patience': 2, 'train.eval_every': 5}
  workdir = str(tmp_path / 'run')
  first = train.train(tiny_config(**{'train.num_steps': 40, **rule}), workdir)
  assert first['stopped_early'] and first['best_step'] == 5 and first['step'] == 15
  again = train.train(tiny_config(**{'train.num_steps': 80, **rule}), workdir)
  assert again['stopped_early'] and again['steps_trained'] == 0 and again['step'] == 15
  assert again['test_accuracy'] == first['test_accuracy']


def test_a_run_whose_schedule_spreads_over_its_steps_is_not_continued(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train(tiny_config(**{'optimizer.schedule': 'cosine'}), workdir)
  with pytest.raises(ConfigError, match=r"train\.num_steps \(20 -> 40\), and optimizer\.schedule 'cosine' spreads "
                                        r'over train\.num_steps'):
    train.train(tiny_config(**{'optimizer.schedule': 'cosine', 'train.num_steps': 40}), workdir)
  with pytest.raises(ConfigError, match=r'optimizer\.learning_rate .* train\.num_steps'):  # with another key: as before
    train.train(tiny_config(**{'optimizer.learning_rate': 0.5, 'train.num_steps': 40}), workdir)


@pytest.mark.parametrize('spec, overrides, spread', [
    ('mnist/dcgan.py:mnist', {}, []),  # constant rates for both networks: may be continued
    ('mnist/dcgan.py:mnist', {'discriminator_optimizer.schedule': 'linear'}, ["discriminator_optimizer.schedule 'linear'"]),
    ('gymnax/ppo.py', {}, ["optimizer.schedule 'linear'"]),
    ('gymnax/dqn.py', {}, ["dqn's exploration"]),
    ('mnist/lenet5.py', {}, ["optimizer.schedule 'cosine'"]),
    ('mnist/lenet5.py', {'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 100}, []),
])
def test_what_each_family_spreads_over_its_steps(spec, overrides, spread):
  config = config_lib.load(os.path.join(ROOT, 'configs', spec), [f'{k}={v}' for k, v in overrides.items()])
  assert config_lib.spread_over_num_steps(config) == spread


@pytest.mark.parametrize('content', ['', '{"seed": ', '\x00\x01garbage'])
def test_an_empty_or_truncated_config_json_does_not_lock_the_workdir(tmp_path, content, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  first = train.train(config, workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(content)
  again = train.train(config, workdir)
  assert again['steps_trained'] == 0 and again['test_accuracy'] == first['test_accuracy']
  assert 'ignoring the unreadable' in capsys.readouterr().err
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['seed'] == 0  # rewritten whole


DISK_FULL = '''
import os, resource, sys, time
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from jaxlab.run import train
from jaxlab.errors import JaxlabError
workdir = {workdir!r}

def fill_disk(step, state):
  # From step 15 no file of this process may grow to the size of step 10's tree metadata file:
  # the same file of step 20 (same tree, same size) fails in orbax's background writer, as on a
  # full disk. (The data files are no good gauge: tensorstore splits them differently from run to
  # run.) Nothing is logged before step 40, so the logs stay far below the limit when flushed.
  if step == 15:
    step_10 = os.path.join(workdir, 'checkpoints', '10')
    while not os.path.exists(os.path.join(step_10, 'commit_success.txt')):
      time.sleep(0.01)  # step 10's save, still in the background on a busy machine, must succeed
    limit = os.path.getsize(os.path.join(step_10, 'state', '_METADATA')) - 1
    logs = max([os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(workdir, 'tensorboard')) for f in fs]
               + [os.path.getsize(os.path.join(workdir, 'metrics.jsonl'))])
    assert limit > logs + 4000, (limit, logs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
  if 20 <= step < 29:
    time.sleep(0.3)  # steps slow enough that the failed background write ends before the save of step 30

try:
  train.train(tiny_config(**{{'train.num_steps': 40, 'train.checkpoint_every': 10, 'train.log_every': 0,
                           'train.eval_every': 0}}), workdir,
              hooks=[fill_disk, lambda step, state: print('STEP', step, flush=True)])
except JaxlabError as e:
  print('ERROR', e, flush=True)
'''


def test_a_failed_background_save_is_reported_at_once_with_the_last_good_step(tmp_path):
  import subprocess
  import sys

  from conftest import ROOT
  workdir = str(tmp_path / 'run')
  code = DISK_FULL.format(tests=os.path.join(ROOT, 'tests'), workdir=workdir)
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=ROOT)
  lines = proc.stdout.splitlines()
  errors = [line for line in lines if line.startswith('ERROR ')]
  assert len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert errors[0].startswith('ERROR saving the checkpoint of step 20 failed (')
  assert 'File too large' in errors[0] and errors[0].endswith(f'last good checkpoint: step 10 in {workdir}/checkpoints')
  # Reported at the first step after the background write ended, not at the next save (step 30,
  # whose hooks never run, so the last step printed would be 29) or the end.
  last_step = max(int(line.split()[1]) for line in lines if line.startswith('STEP '))
  assert 20 <= last_step < 29
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).latest_step() == 10


def test_save_errors_keep_the_os_cause_of_a_long_tensorstore_message():
  from jaxlab.run.checkpoint import _first_line
  spec = '{"context":{"cache_pool":{}},"driver":"zarr","kvstore":{"driver":"file","path":"/w/checkpoints/20/"}}'
  error = ValueError(f'OUT_OF_RANGE: Error opening "zarr" driver: Error writing local file "/w/{"d" * 200}/.zarray": '
                     f"Failed to write 101 bytes to file 3: File too large [os_error_code='27'] "
                     f"[tensorstore_spec='{spec}']\nsecond line")
  line = _first_line(error)
  assert line.startswith('ValueError: OUT_OF_RANGE: Error opening "zarr" driver') and ' ... ' in line
  assert line.endswith('Failed to write 101 bytes to file 3: File too large') and len(line) < 320


def test_a_run_whose_evaluation_fails_keeps_the_steps_it_trained(tmp_path, monkeypatch):
  """An evaluation that crashes (a bug in a task's metric, a sample too long) must not cost the steps since
  the last checkpoint: the state of the step it reached is saved, and the next run resumes from it."""
  config = tiny_config(**{'train.num_steps': 8, 'train.eval_every': 4, 'train.checkpoint_every': 0})
  workdir = str(tmp_path / 'run')

  def broken(self, state, active=None):
    raise RuntimeError('evaluation failed')
  with monkeypatch.context() as patch:
    patch.setattr(train._Run, 'evaluate', broken)
    with pytest.raises(RuntimeError, match='evaluation failed'):
      train.train(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4']
  summary = train.train(config, workdir)
  assert (summary['step'], summary['steps_trained']) == (8, 4)
