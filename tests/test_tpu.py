"""launch.py tpu against a fake `gcloud` on PATH that records its arguments."""

import json
import os
import shlex
import subprocess
import sys
import tarfile

import pytest
from conftest import launch

from jaxlab.launch import tpu

FAKE_GCLOUD = '''#!{python}
import json, os, shutil, sys
root = os.environ['FAKE_GCLOUD_DIR']
with open(os.path.join(root, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')

def pop(name, default):
  path = os.path.join(root, name)
  lines = open(path).read().split() if os.path.exists(path) else []
  open(path, 'w').write(' '.join(lines[1:]))
  return lines[0] if lines else default

verb = sys.argv[4]
if verb == 'describe':
  state = pop('states', 'ABSENT')
  if state == 'ABSENT':
    sys.exit('ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND')
  print(state)
elif verb == 'scp':
  shutil.copy(sys.argv[5], os.path.join(root, 'copied.tar.gz'))
elif verb == 'ssh' and 'launch.py' in ' '.join(sys.argv):
  sys.exit(int(pop('run_codes', '0')))
'''

NASTY = '--config.model.name=a b; touch INJECTED'
LAUNCH_ARGS = ['--config=configs/mnist1d/cnn.py', NASTY, "--config.seed=$(touch INJECTED2)'", '--workdir', 'runs/x y']
BASE = ['--tpu', 'my-v4', '--zone', 'us-central2-b']


@pytest.fixture
def gcloud(tmp_path, monkeypatch):
  """A fake gcloud first on PATH; returns helpers to script it and read its calls."""
  bin_dir, state = tmp_path / 'bin', tmp_path / 'gcloud'
  bin_dir.mkdir()
  state.mkdir()
  script = bin_dir / 'gcloud'
  script.write_text(FAKE_GCLOUD.format(python=sys.executable))
  script.chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('FAKE_GCLOUD_DIR', str(state))

  class Fake:
    dir = state

    @staticmethod
    def script(states=(), run_codes=()):
      (state / 'states').write_text(' '.join(states))
      (state / 'run_codes').write_text(' '.join(map(str, run_codes)))

    @staticmethod
    def calls():
      path = state / 'calls.jsonl'
      return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

  return Fake


@pytest.fixture
def repo(tmp_path):
  """A small git repository standing in for the project: tracked, untracked and ignored files."""
  root = tmp_path / 'repo'
  root.mkdir()
  git = lambda *a: subprocess.run(['git', '-C', str(root), *a], check=True, capture_output=True)
  git('init', '-q')
  (root / 'launch.py').write_text('committed\n')
  (root / '.gitignore').write_text('runs/\n')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'init')
  (root / 'launch.py').write_text('edited\n')
  (root / 'new.py').write_text('untracked\n')
  (root / 'runs').mkdir()
  (root / 'runs' / 'big.bin').write_text('ignored\n')
  return root


def _verbs(calls):
  return [c[3] for c in calls]


def _remote_command(call):
  """The shell line gcloud ssh hands to every worker's login shell."""
  command = [a for a in call if a.startswith('--command=')]
  assert len(command) == 1
  return command[0][len('--command='):]


def test_fresh_spot_slice_is_created_code_copied_installed_and_run_on_all_workers(gcloud, repo):
  gcloud.script(states=['ABSENT'])
  assert tpu.main(['run', *BASE, '--spot', '--', *LAUNCH_ARGS], root=str(repo)) == 0
  calls = gcloud.calls()
  assert _verbs(calls) == ['describe', 'create', 'scp', 'ssh', 'ssh']
  assert calls[0] == ['compute', 'tpus', 'tpu-vm', 'describe', 'my-v4', '--zone=us-central2-b', '--format=value(state)']
  assert calls[1] == ['compute', 'tpus', 'tpu-vm', 'create', 'my-v4', '--zone=us-central2-b',
                      '--accelerator-type=v4-8', '--version=tpu-ubuntu2204-base', '--spot']
  assert calls[2][5:] == ['my-v4:jaxlab.tar.gz', '--worker=all', '--zone=us-central2-b']
  assert all('--worker=all' in c for c in calls[3:])
  install = shlex.split(_remote_command(calls[3]))
  assert install[:2] == ['bash', '-c'] and "pip install -q -e . 'jax[tpu]'" in install[2]
  with tarfile.open(gcloud.dir / 'copied.tar.gz') as tar:  # the working tree, without ignored files
    assert sorted(tar.getnames()) == ['.gitignore', 'launch.py', 'new.py']
    assert tar.extractfile('launch.py').read() == b'edited\n'


def test_revision_copies_that_commit_only(gcloud, repo):
  gcloud.script(states=['READY'])
  assert tpu.main([*BASE, '--revision=HEAD', '--', '--config=c.py'], root=str(repo)) == 0
  assert _verbs(gcloud.calls()) == ['describe', 'scp', 'ssh', 'ssh']  # READY: reused, not created
  with tarfile.open(gcloud.dir / 'copied.tar.gz') as tar:
    assert sorted(tar.getnames()) == ['.gitignore', 'launch.py']
    assert tar.extractfile('launch.py').read() == b'committed\n'


def test_launch_arguments_reach_the_worker_quoted_not_injected(gcloud, repo, tmp_path):
  gcloud.script(states=['READY'])
  assert tpu.main([*BASE, '--', *LAUNCH_ARGS], root=str(repo)) == 0
  run_line = _remote_command(gcloud.calls()[-1])
  # Play the worker: a home with the code, where launch.py records the arguments it receives.
  home = tmp_path / 'home'
  code = home / 'jaxlab'
  code.mkdir(parents=True)
  (code / 'launch.py').write_text('import json, sys\nprint("training")\n'
                                  'json.dump(sys.argv[1:], open("received.json", "w"))\n')
  bin_dir = tmp_path / 'pybin'
  bin_dir.mkdir()
  (bin_dir / 'python3').symlink_to(sys.executable)
  env = {**os.environ, 'HOME': str(home), 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'}
  proc = subprocess.run(['sh', '-c', run_line], cwd=home, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert json.loads((code / 'received.json').read_text()) == LAUNCH_ARGS
  assert not list(home.rglob('INJECTED*'))
  logs = list((code / 'runs' / 'x y').glob('tpu-*.log'))  # written into the run's workdir
  assert len(logs) == 1 and logs[0].read_text() == 'training\n'
  assert (code / tpu.PID_FILE).read_text().strip().isdigit()


def test_stop_sends_sigterm_to_the_recorded_run(gcloud, tmp_path):
  assert tpu.main(['stop', *BASE]) == 0
  line = _remote_command(gcloud.calls()[0])
  home = tmp_path / 'home'
  (home / 'jaxlab').mkdir(parents=True)
  sleeper = subprocess.Popen(['sleep', '60'])
  (home / 'jaxlab' / tpu.PID_FILE).write_text(f'{sleeper.pid}\n')
  subprocess.run(['sh', '-c', line], env={**os.environ, 'HOME': str(home)}, check=True, timeout=30)
  assert sleeper.wait(timeout=10) == -15  # SIGTERM: a run saves a checkpoint and exits


def test_watch_recreates_a_preempted_slice_and_reruns_the_same_command(gcloud, repo):
  gcloud.script(states=['READY', 'PREEMPTED', 'PREEMPTED'], run_codes=[255, 0])
  assert tpu.main([*BASE, '--spot', '--watch', '--retry-wait=0', '--', *LAUNCH_ARGS], root=str(repo)) == 0
  calls = gcloud.calls()
  assert _verbs(calls) == ['describe', 'scp', 'ssh', 'ssh',  # reuse, copy, install, run (preempted)
                           'describe', 'describe', 'delete', 'create', 'scp', 'ssh', 'ssh']
  assert calls[3] == calls[-1]  # the same command again; train.py resumes from the checkpoint


def test_without_watch_a_failed_run_returns_its_status(gcloud, repo):
  gcloud.script(states=['READY'], run_codes=[3])
  assert tpu.main([*BASE, '--', '--config=c.py'], root=str(repo)) == 3
  assert _verbs(gcloud.calls()) == ['describe', 'scp', 'ssh', 'ssh']


@pytest.mark.parametrize('action, expected', [
    ('status', ['describe', 'my-v4', '--zone=us-central2-b', '--project=p']),
    ('delete', ['delete', 'my-v4', '--zone=us-central2-b', '--project=p', '--quiet']),
])
def test_status_and_delete(gcloud, action, expected):
  gcloud.script(states=['READY'])
  assert tpu.main([action, *BASE, '--project=p']) == 0
  assert gcloud.calls() == [['compute', 'tpus', 'tpu-vm', *expected]]


def test_logs_reads_the_workdir_logs(gcloud):
  assert tpu.main(['logs', *BASE, '--', '--workdir=runs/a b']) == 0
  assert shlex.split(_remote_command(gcloud.calls()[0]))[2] == "cd ~/jaxlab && tail -n 50 'runs/a b'/tpu-\"$(hostname)\".log"


def test_dry_run_prints_the_commands_and_runs_nothing(gcloud):
  proc = launch('tpu', *BASE, '--accelerator=v5litepod-8', '--dry-run', '--', *LAUNCH_ARGS, timeout=60)
  assert proc.returncode == 0, proc.stderr
  lines = [shlex.split(line, comments=True) for line in proc.stdout.splitlines()]
  assert [line[4] for line in lines] == ['describe', 'create', 'scp', 'ssh', 'ssh']
  assert '--version=v2-alpha-tpuv5-lite' in lines[1] and '--spot' not in lines[1]
  script = shlex.split(_remote_command(lines[-1]))[2]  # what bash -c runs on each worker
  assert shlex.join(['python3', 'launch.py', *LAUNCH_ARGS]) + ' > ' in script
  assert gcloud.calls() == []


@pytest.mark.parametrize('args, message', [
    (['--zone=z', '--', 'x'], 'the following arguments are required: --tpu'),
    (['--tpu=t', '--zone=z'], 'give the launch.py arguments after `--`'),
    (['frob', '--tpu=t', '--zone=z'], "invalid choice: 'frob'"),
    (['--tpu=t', '--zone=z', '--accelerator=v9-8', '--dry-run', '--', 'x'], "unknown accelerator 'v9-8'"),
    (['--tpu=--impersonate-service-account=x', '--zone=z', '--dry-run', '--', 'x'],
     "--tpu '--impersonate-service-account=x' is not a Google Cloud name"),
])
def test_bad_usage_is_one_line_and_exit_2(args, message):
  proc = launch('tpu', *args, timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ') and message in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_missing_gcloud_is_a_clear_error(monkeypatch, tmp_path, capsys):
  monkeypatch.setenv('PATH', str(tmp_path))
  assert tpu.main([*BASE, '--', 'x']) == 2
  assert 'gcloud not found on PATH' in capsys.readouterr().err
