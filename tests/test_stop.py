"""What SIGTERM and Ctrl-C mean: exit 0 before the state exists, then 'save and stop'; a second Ctrl-C aborts."""

import os
import signal

import pytest
from conftest import tiny_config

from jaxlab.run import stop, train


@pytest.fixture
def handlers():
  assert stop.install()
  yield
  stop.uninstall()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_before_the_state_exists_a_signal_exits_0(handlers):
  with pytest.raises(SystemExit) as info:
    os.kill(os.getpid(), signal.SIGTERM)
  assert info.value.code == 0


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
