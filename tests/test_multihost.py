"""Two local processes (gloo CPU collectives, simulated devices) train like one process with all the devices."""

import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA_DIR, LAUNCH, ROOT, launch, needs_data

TINY = ['--config=configs/mnist1d/cnn.py', '--config.data.num_samples=1000', '--config.data.batch_size=40',
        '--config.data.eval_batch_size=200', '--config.model.channels=8', '--config.train.num_steps=20',
        '--config.train.checkpoint_every=10', '--config.train.eval_every=0', '--config.train.log_every=10']
# Parameters and Adam's moments split over 8 devices of 2 processes (ZeRO-3): every kernel divides by 8.
FSDP_MLP = ['--config=configs/mnist1d/mlp.py', *[a for a in TINY[1:] if 'channels' not in a],
            '--config.model.hidden=(64, 64)', '--config.mesh.data=1', '--config.mesh.fsdp=8']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, cache: str, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAXLAB_', 'SLURM_'))}
  return {**env, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAXLAB_CACHE_DIR': cache,
          'JAX_PLATFORMS': 'cpu', **extra}


def _one_process(workdir, cache, config=TINY, devices: int = 4, **extra: str) -> subprocess.CompletedProcess:
  proc = launch(*config, f'--workdir={workdir}', env=_env(devices, cache, **extra), timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _two_processes(workdir, cache, use_env: bool, config=TINY, devices_each: int = 2, **env: str) -> list[str]:
  """Runs both processes of a 2-process job; the job is given by flags, or by JAXLAB_* env vars."""
  address = f'127.0.0.1:{_free_port()}'
  procs = []
  try:
    for i in range(2):
      if use_env:
        args, extra = [], {'JAXLAB_COORDINATOR_ADDRESS': address, 'JAXLAB_NUM_PROCESSES': '2',
                           'JAXLAB_PROCESS_ID': str(i)}
      else:
        args, extra = [f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'], {}
      procs.append(subprocess.Popen([sys.executable, LAUNCH, *config, *args, f'--workdir={workdir}'], cwd=ROOT,
                                    env=_env(devices_each, cache, **env, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True))
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outputs):
      assert p.returncode == 0, out[-3000:]
    return outputs
  finally:
    # A timeout or failure must not leave a process behind, e.g. one waiting for its peer forever.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()


def _params(workdir, step: int) -> dict:
  """The params of the checkpoint at `step`, read with orbax as host numpy arrays."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    state = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return state['params']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  cache = str(root / 'cache')
  single = _one_process(root / 'single', cache, FSDP_MLP, devices=8)
  multi_out = _two_processes(root / 'multi', cache, use_env=False, config=FSDP_MLP, devices_each=4)
  return root, single.stdout, multi_out


def _assert_close(a, b, atol=1e-5):
  import jax
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and leaves_a
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
  root, single_out, multi_out = runs
  assert 'on 8 cpu device(s)' in single_out
  assert 'on 8 cpu device(s)' in multi_out[0]  # 2 processes x 4 devices form one 8-device mesh
  for out in (single_out, multi_out[0]):  # 8 ways: each device holds an eighth of the state
    total, per_device = (float(x) for x in re.search(r'state ([\d.]+) MiB \(([\d.]+) MiB per device', out).groups())
    assert per_device == pytest.approx(total / 8, abs=0.01)
  # Each process wrote its own shards.
  assert {p for p in os.listdir(root / 'multi' / 'checkpoints' / '20' / 'state') if p.startswith('ocdbt.process_')} == {
      'ocdbt.process_0', 'ocdbt.process_1'}
  assert 'Finished step 20/20' in multi_out[0]
  assert 'Finished step' not in multi_out[1]  # only process 0 reports and writes logs
  _assert_close(_params(root / 'single', 20), _params(root / 'multi', 20))
  import jax
  kernel_10, kernel_20 = (jax.tree.leaves(_params(root / 'multi', s))[0] for s in (10, 20))
  assert not np.allclose(kernel_10, kernel_20)  # the params did train between the checkpoints


# Plays srun on one node: starts SLURM_NTASKS copies of the command with the variables srun gives each task.
FAKE_SRUN = '''#!{python}
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith('--'):
  args.pop(0)
tasks = int(os.environ['SLURM_NTASKS'])
procs = [subprocess.Popen(args, env={{**os.environ, 'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i),
                                     'SLURM_STEP_NODELIST': 'localhost', 'SLURM_STEP_NUM_NODES': '1'}})
         for i in range(tasks)]
sys.exit(max(p.wait() for p in procs))
'''


def _slurm_job_id() -> int:
  """A job id whose coordinator port (jax: 61440 + id % 4096) is free here."""
  for _ in range(100):
    port = _free_port()
    if port >= 61440:
      return port - 61440 + 4096
  with socket.socket() as s:
    for port in range(61440, 65536):
      try:
        s.bind(('127.0.0.1', port))
        return port - 61440 + 4096
      except OSError:
        continue
  pytest.skip('no free port in 61440-65535 for the SLURM coordinator')


def test_a_slurm_job_of_two_tasks_trains_like_one_process(runs, tmp_path):
  """The script `launch.py slurm` submits, run on one node with 2 tasks: the tasks join one job from
  SLURM's variables alone and train like the one-process run with all devices."""
  from jaxlab.launch import slurm
  root, _, _ = runs
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(FAKE_SRUN.format(python=sys.executable))
  (bin_dir / 'srun').chmod(0o755)
  workdir = tmp_path / 'slurm'
  options, launch_args = slurm.parse(['--gpus-per-node=0', '--', *FSDP_MLP, f'--workdir={workdir}'])
  (tmp_path / 'job.sbatch').write_text(slurm.script(options, launch_args, LAUNCH, ROOT))
  env = {**_env(4, str(root / 'cache')), 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
         'SLURM_JOB_ID': str(_slurm_job_id()), 'SLURM_NTASKS': '2', 'SLURM_JOB_NODELIST': 'localhost'}
  proc = subprocess.run(['bash', str(tmp_path / 'job.sbatch')], env=env, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'on 8 cpu device(s)' in proc.stdout and proc.stdout.count('Finished step 20/20') == 1
  _assert_close(_params(root / 'single', 20), _params(workdir, 20))


def test_checkpoint_of_two_processes_resumes_in_one_process(runs, tmp_path):
  root, _, _ = runs
  workdir = tmp_path / 'resumed'
  shutil.copytree(root / 'multi', workdir)
  shutil.rmtree(workdir / 'checkpoints' / '20')  # resume from the 2-process checkpoint of step 10
  out = _one_process(workdir, str(root / 'cache'), FSDP_MLP, devices=8).stdout
  assert 'Resuming from step 10' in out and '(10 trained' in out
  _assert_close(_params(root / 'single', 20), _params(workdir, 20))


def test_a_damaged_shard_of_one_process_makes_every_process_resume_from_the_older_step(runs, tmp_path):
  """Process 1's files of step 20 truncated: the processes agree before restoring that step 10 is the newest
  every one of them holds intact, so none waits at orbax's barrier for a restore that failed elsewhere."""
  root, _, _ = runs
  workdir = tmp_path / 'damaged'
  shutil.copytree(root / 'multi', workdir)
  shard = workdir / 'checkpoints' / '20' / 'state' / 'ocdbt.process_1'
  damaged = [os.path.join(d, f) for d, _, files in os.walk(shard) for f in files]
  assert damaged
  for path in damaged:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  outputs = _two_processes(workdir, str(root / 'cache'), use_env=False, config=FSDP_MLP, devices_each=4)
  assert 'Resuming from step 10' in outputs[0] and '(10 trained' in outputs[0]
  assert 'checkpoint 20' in outputs[0] and 'moved it aside' in outputs[0]
  _assert_close(_params(root / 'single', 20), _params(workdir, 20))


FASHION_MLP = ['--config=configs/fashion_mnist/mlp.py', '--config.data.batch_size=40', '--config.data.validation_size=0',
               '--config.train.num_steps=20', '--config.train.checkpoint_every=10', '--config.train.eval_every=0',
               '--config.train.log_every=10']


@needs_data('fashion_mnist')
def test_two_processes_share_the_grain_pipeline_and_prepare_tfds_once(tmp_path):
  """Each process reads its half of every batch from the TFDS/grain pipeline: together they train
  like one process. They share one fresh TFDS folder, which process 0 prepares first."""
  cache, data = str(tmp_path / 'cache'), {'JAXLAB_DATA_DIR': DATA_DIR, 'TFDS_DATA_DIR': str(tmp_path / 'tfds')}
  outputs = _two_processes(tmp_path / 'multi', cache, False, FASHION_MLP, **data)
  assert 'on 4 cpu device(s)' in outputs[0] and 'Finished step 20/20' in outputs[0]
  _one_process(tmp_path / 'single', cache, FASHION_MLP, **data)  # reads the folder the two prepared
  # Adam moves a weight whose gradient is near zero by up to its rate (1e-3) per step whatever the
  # gradient's size, so a rounding difference in such a gradient's cross-process sum shows at 1e-5
  # (one weight of 78,400 did); 1e-4 is a tenth of one step.
  _assert_close(_params(tmp_path / 'single', 20), _params(tmp_path / 'multi', 20), atol=1e-4)


def test_env_vars_configure_the_job(tmp_path):
  outputs = _two_processes(tmp_path / 'env', str(tmp_path / 'cache'), use_env=True)
  assert 'on 4 cpu device(s)' in outputs[0]
  assert (tmp_path / 'env' / 'summary.json').exists()
  assert sorted(os.listdir(tmp_path / 'env' / 'checkpoints')) == ['10', '20']


def test_settings_come_from_flags_then_env_then_a_tpu_vm(tmp_path):
  from jaxlab.errors import ConfigError
  from jaxlab.parallel import distributed
  env = {'JAXLAB_COORDINATOR_ADDRESS': 'h:1', 'JAXLAB_NUM_PROCESSES': '4', 'JAXLAB_PROCESS_ID': '3'}
  assert distributed.resolve(env=env, tpu_vm=False) == distributed.Settings('h:1', 4, 3)
  assert distributed.resolve('x:2', 2, 0, env=env, tpu_vm=False) == distributed.Settings('x:2', 2, 0)
  assert distributed.resolve(env={}, tpu_vm=True) == distributed.Settings(auto='tpu')
  assert distributed.resolve(env={}, tpu_vm=False) is None
  slurm_step = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n[1-2]', 'SLURM_NTASKS': '16', 'SLURM_PROCID': '9',
                'SLURM_LOCALID': '1'}
  assert distributed.resolve(env=slurm_step, tpu_vm=True) == distributed.Settings(None, 16, 9, auto='slurm')
  assert distributed.resolve(env={**slurm_step, **env}, tpu_vm=False) == distributed.Settings('h:1', 4, 3)
  assert distributed.resolve(env={**slurm_step, 'SLURM_NTASKS': '1'}, tpu_vm=False) is None  # one task: a plain run
  assert distributed.resolve(env={k: v for k, v in slurm_step.items() if k != 'SLURM_STEP_NODELIST'},
                             tpu_vm=False) is None  # sbatch's script itself, outside any srun step
  with pytest.raises(ConfigError, match='missing: coordinator_address, process_id'):
    distributed.resolve(num_processes=2, env={}, tpu_vm=False)
  with pytest.raises(ConfigError, match=r'process_id must be in \[0, num_processes=2\), got 2'):
    distributed.resolve('h:1', 2, 2, env={}, tpu_vm=False)
  with pytest.raises(ConfigError, match="num_processes must be an integer, got 'two'"):
    distributed.resolve(env={**env, 'JAXLAB_NUM_PROCESSES': 'two'}, tpu_vm=False)
  pci = tmp_path / 'pci'
  for address, vendor, device in (('0000:00:04.0', '0x1ae0', '0x0042'), ('0000:00:05.0', '0x8086', '0x1237')):
    (pci / address).mkdir(parents=True)
    (pci / address / 'vendor').write_text(vendor + '\n')
    (pci / address / 'device').write_text(device + '\n')
  assert not distributed.on_tpu_vm(str(pci))  # a gVNIC: Google's vendor id, but no TPU
  (pci / '0000:00:04.0' / 'device').write_text('0x005e\n')  # a TPU v4 chip
  assert distributed.on_tpu_vm(str(pci))


def test_incomplete_multiprocess_flags_are_one_line_errors(tmp_path):
  proc = launch(*TINY, '--num_processes=2', f'--workdir={tmp_path}/w', env=_env(1, str(tmp_path / 'cache')),
                timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: a multi-process run needs coordinator_address')
