"""launch.py slurm against fake sbatch/squeue/scancel/scontrol/srun on PATH that record their arguments.

The two-process run that srun starts for real is in test_multihost.py (it shares that file's
one-process reference run).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import launch

from jaxlab.launch import slurm

FAKE_SLURM = '''#!{python}
import json, os, signal, sys
root = os.environ['FAKE_SLURM_DIR']
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.path.join(root, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps([name, *args]) + '\\n')
if name == 'sbatch':
  print('4242;cluster')
elif name == 'squeue':
  print('JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)')
elif name == 'scancel' and '--signal=TERM' in args and os.path.exists(os.path.join(root, 'task.pid')):
  os.kill(int(open(os.path.join(root, 'task.pid')).read()), signal.SIGTERM)
elif name == 'srun':  # one task: run the command in place of srun, without srun's own options
  while args and args[0].startswith('--'):
    args.pop(0)
  os.execvp(args[0], args)
'''

# Plays launch.py on the compute node: records its arguments; with FAKE_RUN_WAIT it runs until
# SIGTERM and then exits 0, as a run does after saving its checkpoint.
FAKE_LAUNCH = '''import json, os, signal, sys, time
root = os.environ['FAKE_SLURM_DIR']
json.dump(sys.argv[1:], open(os.path.join(root, 'received.json'), 'w'))
if os.environ.get('FAKE_RUN_WAIT'):
  def stop(signum, frame):
    open(os.path.join(root, 'stopped'), 'w').write(signal.Signals(signum).name)
    sys.exit(0)
  signal.signal(signal.SIGTERM, stop)
  open(os.path.join(root, 'task.pid.tmp'), 'w').write(str(os.getpid()))
  os.replace(os.path.join(root, 'task.pid.tmp'), os.path.join(root, 'task.pid'))  # never seen half written
  time.sleep(60)
  sys.exit(3)
'''

NASTY = '--config.model.name=a b; touch INJECTED'
LAUNCH_ARGS = ['--config=configs/mnist1d/cnn.py', NASTY, "--config.seed=$(touch INJECTED2)'", '--workdir', 'runs/x y']


@pytest.fixture
def cluster(tmp_path, monkeypatch):
  """Fake SLURM commands first on PATH, a code folder with a fake launch.py, and the submit folder as cwd."""
  bin_dir, state, code, cwd = (tmp_path / n for n in ('bin', 'slurm', 'code', 'submit'))
  for folder in (bin_dir, state, code, cwd):
    folder.mkdir()
  fake = bin_dir / 'fake_slurm'
  fake.write_text(FAKE_SLURM.format(python=sys.executable))
  fake.chmod(0o755)
  for name in ('sbatch', 'squeue', 'scancel', 'scontrol', 'srun'):
    (bin_dir / name).symlink_to(fake)
  (code / 'launch.py').write_text(FAKE_LAUNCH)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('FAKE_SLURM_DIR', str(state))
  monkeypatch.chdir(cwd)

  class Fake:
    dir, root, submit_dir = state, code, cwd

    @staticmethod
    def calls():
      path = state / 'calls.jsonl'
      return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

  return Fake


def _directives(script: str) -> list[str]:
  return [line[len('#SBATCH '):] for line in script.splitlines() if line.startswith('#SBATCH ')]


def _submit(cluster, *args: str, launch_args=LAUNCH_ARGS) -> str:
  """Submits with the fake sbatch; returns the script it was given."""
  assert slurm.main([*args, '--', *launch_args], root=str(cluster.root)) == 0
  (call,) = cluster.calls()
  workdir = cluster.submit_dir / 'runs' / 'x y'
  assert call == ['sbatch', '--parsable', f'--output={workdir}/slurm-%j.out', f'{workdir}/{slurm.SCRIPT_NAME}']
  return (workdir / slurm.SCRIPT_NAME).read_text()


def test_the_script_asks_for_the_resources_one_process_per_gpu(cluster, capsys):
  script = _submit(cluster, '--nodes=2', '--gpus-per-node=4', '--time=12:00:00', '--partition=gpu',
                   '--account=lab', '--qos=high', '--mem=200G', '--cpus-per-task=8', '--sbatch=--constraint=a100',
                   '--sbatch=#SBATCH --exclusive', '--stop-before=600')
  assert _directives(script) == [
      '--job-name=jaxlab-x_y', '--nodes=2', '--ntasks-per-node=4', '--gpus-per-node=4', '--cpus-per-task=8',
      '--time=12:00:00', '--partition=gpu', '--account=lab', '--qos=high', '--mem=200G', '--requeue',
      '--signal=B:TERM@600', '--constraint=a100', '--exclusive']
  assert 'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"' in script
  assert 'JAX_LOCAL_DEVICE_IDS' not in script  # jax gives each process the GPU of its local rank
  assert 'Submitted job 4242 (jaxlab-x_y): 2 node(s) x 4 process(es)' in capsys.readouterr().out


def test_one_process_per_node_sees_all_its_gpus(cluster):
  script = _submit(cluster, '--gpus-per-node=8', '--processes=per-node', '--no-requeue')
  assert _directives(script) == ['--job-name=jaxlab-x_y', '--nodes=1', '--ntasks-per-node=1', '--gpus-per-node=8',
                                 '--no-requeue']
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7' in script.splitlines()
  assert 'trap' not in script


def _run_script(cluster, env=None, **kwargs) -> subprocess.Popen:
  """The submitted script run as SLURM would run it on the first node (a job id in the environment)."""
  path = cluster.submit_dir / 'runs' / 'x y' / slurm.SCRIPT_NAME
  return subprocess.Popen(['bash', str(path)], env={**os.environ, 'SLURM_JOB_ID': '4242', **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_launch_arguments_reach_every_process_quoted_not_injected(cluster):
  _submit(cluster, '--setup=export SETUP_RAN=yes')
  proc = _run_script(cluster)
  out = proc.communicate(timeout=60)[0]
  assert proc.returncode == 0, out
  assert json.loads((cluster.dir / 'received.json').read_text()) == LAUNCH_ARGS
  assert not list(cluster.submit_dir.rglob('INJECTED*')) and not list(cluster.root.rglob('INJECTED*'))
  srun = [c for c in cluster.calls() if c[0] == 'srun']
  assert srun == [['srun', '--kill-on-bad-exit=1', sys.executable, str(cluster.root / 'launch.py'), *LAUNCH_ARGS]]


def _wait_for(path, seconds=30):
  deadline = time.monotonic() + seconds
  while not path.exists():
    assert time.monotonic() < deadline, f'{path} never appeared'
    time.sleep(0.05)


def test_sigterm_before_the_time_limit_checkpoints_and_requeues(cluster):
  _submit(cluster)
  proc = _run_script(cluster, {'FAKE_RUN_WAIT': '1'})
  _wait_for(cluster.dir / 'task.pid')
  proc.send_signal(signal.SIGTERM)  # what `--signal=B:TERM@300` does
  out = proc.communicate(timeout=60)[0]
  assert proc.returncode == 0, out
  assert (cluster.dir / 'stopped').read_text() == 'SIGTERM'  # the run saved and exited
  calls = [c for c in cluster.calls() if c[0] != 'srun'][1:]  # after sbatch
  assert calls == [['scancel', '--signal=TERM', '4242'], ['scontrol', 'requeue', '4242']]
  assert 'requeueing job 4242' in out


def test_sigterm_to_the_processes_only_stops_without_requeue(cluster):
  _submit(cluster)
  proc = _run_script(cluster, {'FAKE_RUN_WAIT': '1'})
  _wait_for(cluster.dir / 'task.pid')
  os.kill(int((cluster.dir / 'task.pid').read_text()), signal.SIGTERM)  # what `slurm stop` does
  out = proc.communicate(timeout=60)[0]
  assert proc.returncode == 0, out
  assert [c[0] for c in cluster.calls()] == ['sbatch', 'srun']


def test_a_failing_run_fails_the_job(cluster):
  _submit(cluster)
  (cluster.root / 'launch.py').write_text('import sys; sys.exit(7)\n')
  proc = _run_script(cluster)
  proc.communicate(timeout=60)
  assert proc.returncode == 7


def test_status_stop_and_logs(cluster, capsys):
  args = ['--', '--config=configs/mnist1d/cnn.py', '--workdir=runs/exp1']
  user = f'--user={__import__("getpass").getuser()}'
  assert slurm.main(['status', *args]) == 0
  assert slurm.main(['stop', *args]) == 0
  assert cluster.calls() == [['squeue', user, '--name=jaxlab-exp1'],
                             ['scancel', user, '--name=jaxlab-exp1', '--state=RUNNING', '--signal=TERM'],
                             ['scancel', user, '--name=jaxlab-exp1', '--state=PENDING']]
  logs = cluster.submit_dir / 'runs' / 'exp1'
  logs.mkdir(parents=True)
  (logs / 'slurm-7.out').write_text('old\n')
  os.utime(logs / 'slurm-7.out', (1, 1))
  (logs / 'slurm-9.out').write_text(''.join(f'line {i}\n' for i in range(100)))
  capsys.readouterr()
  assert slurm.main(['logs', '--lines=2', *args]) == 0
  assert capsys.readouterr().out == f'==> {os.path.join("runs/exp1", "slurm-9.out")} <==\nline 98\nline 99\n'


def test_a_cluster_file_sets_defaults_and_flags_win(cluster, tmp_path):
  settings = tmp_path / 'cluster.toml'
  settings.write_text('account = "lab"\npartition = "a100"\ngpus_per_node = 8\n'
                      'sbatch = ["--constraint=ib"]\nsetup = "module load cuda/12"\n')
  script = _submit(cluster, f'--cluster={settings}', '--partition=h100')
  assert _directives(script) == ['--job-name=jaxlab-x_y', '--nodes=1', '--ntasks-per-node=8', '--gpus-per-node=8',
                                 '--partition=h100', '--account=lab', '--requeue', '--signal=B:TERM@300',
                                 '--constraint=ib']
  assert 'module load cuda/12' in script.splitlines()


def test_dry_run_prints_the_script_and_submits_nothing(cluster):
  proc = launch('slurm', '--time=1:00:00', '--dry-run', '--', '--config=configs/mnist1d/cnn.py',
                '--workdir=/tmp/unused-dry-run', timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert '#SBATCH --time=1:00:00' in proc.stdout.splitlines()
  assert proc.stdout.strip().splitlines()[-1].startswith('sbatch --parsable --output=/tmp/unused-dry-run/slurm-%j.out')
  assert cluster.calls() == [] and not os.path.exists('/tmp/unused-dry-run')


@pytest.mark.parametrize('args, message', [
    (['--partition=a\nrm -rf ~', '--', 'x'], '--partition must be one word without spaces'),
    (['--sbatch=--a\n--b', '--', 'x'], '--sbatch must be one non-empty line'),
    (['--setup=a\nb', '--', 'x'], '--setup must be one line'),
    (['--nodes=0', '--', 'x'], '--nodes must be positive, got 0'),
    (['--gpus-per-node=-1', '--', 'x'], '--gpus-per-node must be >= 0'),
    ([], 'give the launch.py arguments after `--`'),
    (['frob', '--', 'x'], "invalid choice: 'frob'"),
    (['--cluster=/nonexistent.toml', '--', 'x'], '--cluster /nonexistent.toml: No such file or directory'),
])
def test_bad_usage_is_one_line_and_exit_2(cluster, capsys, args, message):
  assert slurm.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message in err and len(err.strip().splitlines()) == 1
  assert cluster.calls() == []


@pytest.mark.parametrize('content, message', [
    ('acount = "x"\n', "unknown key 'acount'"),
    ('nodes = "two"\n', "nodes must be a int, got 'two'"),
    ('nodes = [\n', 'is not valid TOML'),
])
def test_bad_cluster_files(cluster, tmp_path, capsys, content, message):
  path = tmp_path / 'bad.toml'
  path.write_text(content)
  assert slurm.main([f'--cluster={path}', '--', 'x']) == 2
  assert message in capsys.readouterr().err


def test_missing_sbatch_is_a_clear_error(cluster, monkeypatch, tmp_path, capsys):
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert slurm.main(['--', '--workdir=runs/w']) == 2
  assert 'sbatch not found on PATH; run this on a SLURM login node' in capsys.readouterr().err
