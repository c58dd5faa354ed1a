"""One run per workdir: a second launch is refused naming the holder; a killed holder leaves no stale lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import LAUNCH, ROOT, launch

from jaxlab.launch import sweep
from jaxlab.run import workdir_lock

FAST = ['--config.data.num_samples=1000', '--config.data.batch_size=40', '--config.data.eval_batch_size=200',
        '--config.model.channels=8', '--config.train.checkpoint_every=500']


def _wait_for(condition, seconds=120):
  deadline = time.time() + seconds
  while not condition() and time.time() < deadline:
    time.sleep(0.1)
  assert condition(), f'timed out after {seconds}s'


def _gone(pid: int) -> bool:
  """Exited (a zombie whose new parent has not reaped it yet counts as exited)."""
  try:
    with open(f'/proc/{pid}/status') as f:
      return any(line.startswith('State:') and 'Z' in line.split()[1] for line in f)
  except FileNotFoundError:
    return True


def test_a_second_launch_on_a_running_workdir_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
  workdir = tmp_path / 'x'
  first = subprocess.Popen([sys.executable, LAUNCH, *FAST, '--config.train.num_steps=1000000', f'--workdir={workdir}'],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
  try:
    _wait_for(lambda: (workdir / 'metrics.jsonl').exists())
    second = launch(*FAST, '--config.seed=1', f'--workdir={workdir}')
    assert second.returncode == 2 and 'Traceback' not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f'error: workdir {workdir} is in use by a run (pid {first.pid} on {socket.gethostname()}, since '
        + second.stderr.split(', since ')[1].strip()]
    assert workdir_lock.holder(str(workdir))['pid'] == first.pid
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The kernel dropped the dead run's lock: nothing is stuck, the next run may take the workdir.
  assert workdir_lock.holder(str(workdir)) is None
  with workdir_lock.WorkdirLock(str(workdir)):
    assert workdir_lock.holder(str(workdir))['pid'] == os.getpid()


def test_the_lock_is_per_open_file_so_one_process_cannot_hold_a_workdir_twice(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), what='sweep'):
    with pytest.raises(workdir_lock.WorkdirBusyError, match=rf'in use by a sweep \(pid {os.getpid()} '):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()


def test_bucket_style_records_detect_stale_holders_by_host_and_pid(tmp_path):
  """The record lock used where no OS lock exists (gs:// workdirs), exercised on a local path."""
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  record = lambda **kw: lock.path.write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getppid(),
                                                         'what': 'run', 'since': 'then', **kw}))
  record()  # a live process on this host
  with pytest.raises(workdir_lock.WorkdirBusyError, match=rf'pid {os.getppid()} on'):
    lock._acquire_record()
  record(host='another-host')  # cannot be checked from here: refused, with what to do if that host is gone
  with pytest.raises(workdir_lock.WorkdirBusyError, match='if that host is gone, delete'):
    lock._acquire_record()
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  record(pid=dead.pid)  # a dead process on this host: stale, taken over
  lock._acquire_record()
  assert json.loads(lock.path.read_text())['pid'] == os.getpid()
  lock.release()
  assert not lock.path.exists()


def test_a_second_sweep_on_the_same_workdir_is_refused_at_once(tmp_path):
  spec = os.path.join(ROOT, 'configs', 'mnist1d', 'mlp.py')
  with workdir_lock.WorkdirLock(str(tmp_path / 'sweep'), what='sweep'):
    proc = launch('sweep', f'--config={spec}', f'--workdir={tmp_path / "sweep"}')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert f'is in use by a sweep (pid {os.getpid()}' in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 'sweep' / 'sweep.json').exists()


def test_a_restarted_sweep_waits_for_a_point_still_held(tmp_path, capsys):
  point = tmp_path / 'learning_rate=0.1'
  holder = subprocess.Popen([sys.executable, '-c', f'''
import time
from jaxlab.run import workdir_lock
with workdir_lock.WorkdirLock({str(point)!r}):
  print('held', flush=True)
  time.sleep(1.5)
'''], stdout=subprocess.PIPE, text=True, cwd=ROOT)
  assert holder.stdout.readline().strip() == 'held'
  began = time.time()
  sweep.wait_until_free(str(point), point.name)
  holder.wait()
  assert time.time() - began > 0.5 and holder.returncode == 0
  assert f'point {point.name} is still held by a run (pid {holder.pid}' in capsys.readouterr().out


def test_a_point_held_longer_than_the_sweep_waits_stops_it_with_one_line(tmp_path):
  from jaxlab.errors import ConfigError
  point = tmp_path / 'learning_rate=0.1'
  holder = subprocess.Popen([sys.executable, '-c', f'''
import time
from jaxlab.run import workdir_lock
with workdir_lock.WorkdirLock({str(point)!r}):
  print('held', flush=True)
  time.sleep(60)
'''], stdout=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(sweep.PointHeld, match=rf'point {point.name} is still held by a run \(pid {holder.pid}.* after '
                                              r'0.5s; stop that process \(or wait longer with --wait\)'):
      sweep.wait_until_free(str(point), point.name, wait=0.5)
    assert holder.poll() is None  # the holder is left alone
  finally:
    holder.kill()
    holder.wait()
  for wait in (-1, float('inf'), float('nan')):
    with pytest.raises(ConfigError, match='--wait must be a number of seconds >= 0'):
      sweep.run(os.path.join(ROOT, 'configs', 'mnist1d', 'mlp.py'), str(tmp_path / 'sweep'), wait=wait)


def test_killing_a_sweep_stops_its_running_point(tmp_path):
  """SIGKILL of the sweep parent: its point gets SIGTERM from the kernel, saves and exits."""
  spec = os.path.join(ROOT, 'configs', 'mnist1d', 'mlp.py')
  workdir = tmp_path / 'sweep'
  parent = subprocess.Popen([sys.executable, LAUNCH, 'sweep', f'--config={spec}', f'--workdir={workdir}',
                             '--config.train.num_steps=1000000', '--config.train.checkpoint_every=0'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
  point = workdir / 'learning_rate=0.003,seed=0'
  try:
    _wait_for(lambda: (point / 'metrics.jsonl').exists() and (point / 'metrics.jsonl').read_text())
    child = workdir_lock.holder(str(point))['pid']
  finally:
    parent.send_signal(signal.SIGKILL)
    parent.wait()
  _wait_for(lambda: _gone(child), seconds=60)
  assert workdir_lock.holder(str(point)) is None
  log = (point / 'launch.log').read_text()
  assert 'Stopped by SIGTERM at step' in log
  assert json.loads((point / 'summary.json').read_text())['preempted'] is True
