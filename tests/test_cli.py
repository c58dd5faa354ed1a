"""launch.py end to end, in subprocesses: outputs, one-line errors, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import LAUNCH, ROOT

FAST = ['--config.data.num_samples=1000', '--config.data.batch_size=40', '--config.data.eval_batch_size=200',
        '--config.model.channels=8']


def _launch(*args, cache=None, **kwargs):
  env = {**os.environ, 'JAXLAB_CACHE_DIR': cache or os.environ.get('JAXLAB_CACHE_DIR', '')}
  return subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env=env, **kwargs)


def test_end_to_end_run_writes_metrics_events_checkpoint_and_summary(tmp_path):
  workdir = tmp_path / 'run'
  cache = str(tmp_path / 'xla_cache')
  proc = _launch(*FAST, '--config.train.num_steps=30', '--config.train.log_every=10',
                 '--config.train.eval_every=15', '--config.train.checkpoint_every=20', f'--workdir={workdir}',
                 cache=cache)
  assert proc.returncode == 0, proc.stderr
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith('Finished step 30/30') and 'test_accuracy' in last
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train_records = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train_records] == [10, 20, 30]
  assert {'loss', 'accuracy', 'learning_rate', 'steps_per_sec'} <= set(train_records[0])
  assert [r['step'] for r in records if r['split'] == 'test'] == [15, 30]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir / 'tensorboard'))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '30']
  assert json.loads((workdir / 'config.json').read_text())['train']['num_steps'] == 30
  summary = json.loads((workdir / 'summary.json').read_text())
  assert f"{summary['test_accuracy']:.2%}" in last
  assert os.listdir(cache), 'the persistent compilation cache stayed empty'

  again = _launch(*FAST, '--config.train.num_steps=30', '--config.train.log_every=10',
                  '--config.train.eval_every=15', '--config.train.checkpoint_every=20', f'--workdir={workdir}',
                  cache=cache)
  assert again.returncode == 0
  assert 'Resuming from step 30' in again.stdout and '(0 trained' in again.stdout


@pytest.mark.parametrize('args, message', [
    (['--config.optimizer.learnin_rate=1'], "unknown config key 'optimizer.learnin_rate' (did you mean 'learning_rate'?)"),
    (['--config.optimzer.learning_rate=1'], "unknown config key 'optimzer.learning_rate'"),
    (['--config.train.num_steps=abc'], 'num_steps'),
    (['--config=configs/nope/missing.py'], 'config file not found'),
    (['--config.model.name=transfomer', '--workdir={tmp}/w'], "unknown model.name 'transfomer'"),
    (['--workdir={tmp}/file/run'], 'not writable'),
    (['--no_such_flag=1'], 'no_such_flag'),
    (['frobnicate'], "unknown command 'frobnicate'"),
    (['--config={tmp}/broken.py'], "could not load the config ({tmp}/broken.py:3): KeyError: 'channels'"),
    (['--config=configs/gymnax/ppo.py', '--config.env.name=Pendulum-v1', '--workdir={tmp}/w'],
     "env.name 'Pendulum-v1' has continuous actions (Box)"),
    (['--config=configs/mnist/vae.py:cnn'],  # the config file refuses its arg: reported by ml_collections
     "could not load the config (configs/mnist/vae.py:23): ValueError: vae.py takes one of mlp, conv"),
    (['--config=configs/fashion_mnist/common.py'], 'the config file defines no get_config(arg=None)'),
    (['--config.data.batch_size=0', '--workdir={tmp}/w'], 'data.batch_size must be positive, got 0'),
    (['--config.mesh.data=0', '--workdir={tmp}/w'], 'mesh axis sizes must be positive or -1'),
    (['--config.train.early_stopping_metric=validation_accuracy', '--workdir={tmp}/w'],
     'train.early_stopping_metric needs a validation split'),
    ([*FAST, '--config.data.validation_size=200', '--config.train.num_steps=2',
      '--config.train.early_stopping_metric=validation_acc', '--workdir={tmp}/w'],
     "'validation_acc' is not among the validation metrics: validation_accuracy, validation_loss"),
    (['--config.data.train_split=1.5', '--workdir={tmp}/w'], 'data.train_split must be in (0, 1)'),
    (['--config.model.channels=0', '--workdir={tmp}/w'], "model 'cnn1d': channels must be positive, got 0"),
    (['--config.data.num_samples=0', '--workdir={tmp}/w'], 'data.num_samples 0 with train_split 0.8 leaves an empty'),
    (['--config.seed=-1', '--workdir={tmp}/w'], 'seed must be in [0, 2147483647], got -1'),
    (['--config.seed=99999999999999999999', '--workdir={tmp}/w'], 'seed must be in [0, 2147483647], got 9999'),
    (['--workdir='], '--workdir is empty'),
    (['sweep', '--workdir='], '--workdir is empty'),
    (['bench', '--bench_steps=0'], '--bench_steps must be >= 1, got 0'),
    (['bench', '--bench_repeats=0'], '--bench_repeats must be >= 1, got 0'),
    (['bench', '--bench_against=model.channels'], "--bench_against 'model.channels' is not of the form key=value"),
    (['bench', '--bench_against=model.chanels=4'], "unknown config key 'model.chanels'"),
    (['--config=configs/cora/gcn.py', '--config.data.batch_size=2', '--workdir={tmp}/w'],
     'data.batch_size and data.eval_batch_size count whole graphs and must be 1'),
    (['--config=configs/cora/gcn.py', '--config.model.propagation=sparse', '--workdir={tmp}/w'],
     "propagation must be 'edges' or 'dense', got 'sparse'"),
    (['--config=configs/cora/gcn.py', '--config.loss.penalty_paths=layer_(', '--workdir={tmp}/w'],
     "loss.penalty_paths 'layer_(' is not a regular expression"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  (tmp_path / 'file').write_text('')
  # A mistake inside a config file is reported with its line, not as an unknown override key.
  (tmp_path / 'broken.py').write_text('def get_config(arg=None):\n  model = {}\n  return model["channels"]\n')
  proc = _launch(*[a.format(tmp=tmp_path) for a in args])
  assert proc.returncode == 2, proc.stderr
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message.format(tmp=tmp_path) in lines[0], proc.stderr


def test_changed_config_in_existing_workdir_is_refused_then_restart_allows_it(tmp_path):
  workdir = tmp_path / 'run'
  assert _launch(*FAST, '--config.train.num_steps=5', f'--workdir={workdir}').returncode == 0
  proc = _launch(*FAST, '--config.train.num_steps=6', '--config.seed=2', f'--workdir={workdir}')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'train.num_steps (5 -> 6)' in proc.stderr and 'seed (0 -> 2)' in proc.stderr
  proc = _launch(*FAST, '--config.train.num_steps=6', '--config.seed=2', f'--workdir={workdir}', '--restart')
  assert proc.returncode == 0, proc.stderr
  assert json.loads((workdir / 'summary.json').read_text())['step'] == 6
  assert len([p for p in os.listdir(tmp_path) if p.startswith('run.old-')]) == 1


def _start(workdir, *args):
  return subprocess.Popen([sys.executable, LAUNCH, *FAST, f'--workdir={workdir}', *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _handles(pid: int, signum: int) -> bool:
  """Whether the process has a handler installed for `signum` (Linux: SigCgt in /proc/<pid>/status)."""
  with open(f'/proc/{pid}/status') as f:
    caught = next(line for line in f if line.startswith('SigCgt:')).split()[1]
  return bool(int(caught, 16) >> (signum - 1) & 1)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_exits_0(tmp_path, signum):
  workdir = tmp_path / 'run'
  proc = _start(workdir, '--config.train.num_steps=1000000', '--config.train.log_every=50',
                '--config.train.checkpoint_every=0', '--config.train.eval_every=20')
  metrics = workdir / 'metrics.jsonl'
  try:
    deadline = time.time() + 120
    while not (metrics.exists() and '"test"' in metrics.read_text()) and time.time() < deadline:
      time.sleep(0.2)
    assert '"test"' in metrics.read_text(), 'the run evaluated nothing within 120 s'
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  name = signal.Signals(signum).name
  assert proc.returncode == 0, stderr
  assert 'Traceback' not in stderr
  assert f'Stopped by {name} at step' in stdout
  last = stdout.strip().splitlines()[-1]
  assert last.startswith('Preempted at step ') and f'stopped by {name}' in last and '|  |' not in last
  steps = [int(s) for s in os.listdir(workdir / 'checkpoints')]
  assert len(steps) == 1 and 20 <= steps[0] < 1000000
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['preempted'] is True and summary['stop_signal'] == name and summary['step'] == steps[0]
  # Evaluations ran before the signal, but none of them is presented as the run's final result.
  assert not any(k.startswith(('test_', 'validation_')) for k in summary)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_exits_0_without_a_traceback(tmp_path, signum):
  proc = _start(tmp_path / 'run')
  try:
    deadline = time.time() + 60
    # Python catches SIGINT from its first moment; SIGTERM is caught once jaxlab's handlers (both) are in.
    while not _handles(proc.pid, signal.SIGTERM) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    proc.send_signal(signum)  # the handler is in place; JAX is still importing, no state exists yet
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 0 and 'Traceback' not in stderr, stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists() and 'Starting' not in stdout


def test_bench_refuses_tasks_its_hand_loop_cannot_compute():
  proc = _launch('bench', '--config=configs/shakespeare_char/bert.py')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip() == ("error: bench: the hand loop computes the loss of classification and "
                                 "language_model; task is 'masked_lm'")


def test_malformed_metrics_lines_are_dropped_with_a_warning(tmp_path):
  workdir = tmp_path / 'run'
  assert _launch(*FAST, '--config.train.num_steps=10', '--config.train.checkpoint_every=5', f'--workdir={workdir}').returncode == 0
  metrics = workdir / 'metrics.jsonl'
  good = metrics.read_bytes()
  metrics.write_bytes(good + b'[1, 2]\n{"step": "x", "split": "train"}\n\xff\xfe\x00garbage\n')
  proc = _launch(*FAST, '--config.train.num_steps=10', '--config.train.checkpoint_every=5', f'--workdir={workdir}')
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr
  assert 'dropped 3 unreadable line(s)' in proc.stderr
  assert metrics.read_bytes() == good
