"""What SIGTERM and Ctrl-C mean: stop at once before the state exists, then 'save and stop'; a second Ctrl-C
aborts; a reading command stops between chunks of its work, never losing the signal."""

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LAUNCH, ROOT, tiny_config

from jaxlab.run import stop, train


@pytest.fixture
def handlers():
  assert stop.install()
  yield
  stop.uninstall()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_before_the_state_exists_a_signal_stops_at_once(handlers):
  with pytest.raises(stop.Stopped) as info:
    os.kill(os.getpid(), signal.SIGTERM)
  assert info.value.exit_code == 128 + 15 and info.value.signal_name == 'SIGTERM'


def test_a_signal_inside_a_garbage_collection_callback_is_not_lost(handlers, capfd):
  """Raised inside a gc callback (JAX runs one at every collection) an exception is printed and dropped; the
  stop is kept for the next check() and the signal comes again, outside the callback."""
  def callback(phase, info):
    if phase == 'start':
      os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the callback
  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
  assert 'Exception ignored' not in capfd.readouterr().err
  with pytest.raises(stop.Stopped):
    stop.check()
  with pytest.raises(stop.Stopped, match='SIGTERM'):  # delivered again a moment later
    time.sleep(10 * stop.REDELIVERY_DELAY_S)


def test_once_armed_a_signal_is_a_request_and_a_second_ctrl_c_aborts(handlers):
  stop.arm()
  os.kill(os.getpid(), signal.SIGINT)
  assert stop.requested(5, multi_process=False) == 'SIGINT'
  with pytest.raises(KeyboardInterrupt):
    os.kill(os.getpid(), signal.SIGINT)


def test_a_sigterm_after_the_run_has_ended_changes_nothing(handlers, tmp_path):
  """launch.py keeps its handlers until the process exits: a SIGTERM after the summary is not exit 143."""
  summary = train.train(tiny_config(), str(tmp_path / 'run'))
  os.kill(os.getpid(), signal.SIGTERM)  # would end pytest itself with the default handler
  assert summary['step'] == 20 and not summary['preempted']
  assert stop.requested(20, multi_process=False) == 'SIGTERM'


@pytest.fixture
def watched():
  """The handlers as the command line installs them for a reading command: `end` records, it does not exit."""
  ended = []
  assert stop.install(end=lambda stopped: ended.append((stopped.signal_name, time.monotonic())))
  yield ended
  stop.uninstall()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd was given back


@pytest.mark.parametrize('with_end', [False, True])
def test_results_are_written_whole_after_a_signal_and_a_stop_waits_for_them(with_end, request):
  ended = request.getfixturevalue('watched') if with_end else request.getfixturevalue('handlers')
  with stop.deferred():
    os.kill(os.getpid(), signal.SIGTERM)  # no raise inside: the files being written stay whole
    time.sleep(0.5)  # time for the watching thread to end the command, which it must not do here
    written = True
  assert written and not ended
  with pytest.raises(stop.Stopped):
    stop.check()


def test_a_reading_command_ends_while_the_main_thread_waits_on_xla(watched):
  """Python's handler runs only once XLA returns (np.asarray waits without looking at signals, unlike
  block_until_ready); `end` runs on its own thread while XLA still computes."""
  matrix = jnp.eye(256) * 0.5
  computation = jax.jit(lambda m, n: jax.lax.fori_loop(0, n, lambda _, x: jnp.tanh(x @ m + 0.1), m))
  np.asarray(computation(matrix, 1))  # compiled
  started = time.monotonic()
  np.asarray(computation(matrix, 200))
  three_seconds = int(200 * 3.0 / (time.monotonic() - started))  # as long on any machine
  threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
  started = time.monotonic()
  with pytest.raises(stop.Stopped):
    np.asarray(computation(matrix, three_seconds))
  returned = time.monotonic()
  assert returned - started > 1.0, 'the computation must outlast the signal for this test to mean anything'
  assert [name for name, _ in watched] == ['SIGTERM']
  assert watched[0][1] < returned - 0.5


def test_a_reading_command_stopped_says_so_and_exits_128_plus_the_signal(tmp_path):
  """SIGTERM during `attack` (start-up or evaluation): one line, status 143, no results written."""
  workdir = tmp_path / 'run'
  train.train(tiny_config(**{'train.num_steps': 10}), str(workdir))
  proc = subprocess.Popen([sys.executable, LAUNCH, 'attack', f'--workdir={workdir}', '--pgd_steps=100000'], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(4)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err[-2000:]
  assert err == 'error: stopped by SIGTERM before attack finished; it wrote no results\n'
  assert not [f for f in os.listdir(workdir) if f.startswith('attack')]
