"""`launch.py slurm`: the same launch command as one multi-process JAX job on a SLURM cluster.

  python launch.py slurm [run] [--nodes 2 --gpus-per-node 8 --time 24:00:00 --partition gpu ...]
                               [--cluster cluster.toml] [--dry-run] -- <launch.py arguments>
  python launch.py slurm status|logs|stop [--job-name NAME] [-- <launch.py arguments>]

`run` writes an sbatch script next to the run's logs (the workdir, as for `launch.py tpu`) and
submits it. The script starts one process per GPU (or per node with `--processes per-node`)
through `srun`; each joins the job by reading SLURM's environment (jaxlab.parallel.distributed). SLURM
sends the script SIGTERM `--stop-before` seconds before the time limit: it passes the signal on
to the processes, which save a checkpoint and exit, and requeues the job, whose next start
resumes from that checkpoint. `stop` sends the processes SIGTERM (they save and exit; no
requeue) and cancels the job where it is still pending; `status` is squeue; `logs` prints the
end of the newest job log.

Cluster settings (account, partition, setup line, ...) can live in a TOML file passed with
`--cluster`; its keys are the flags' names with underscores, and flags given win. Every value
reaching a shell goes through shlex.quote; values written into `#SBATCH` lines may hold no
whitespace or line break.
"""

from __future__ import annotations

import argparse
import getpass
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from typing import Sequence

from jaxlab.launch.remote import (
  ArgumentParser,
  UsageError,
  default_workdir,
  flag_value,
  log_dir,
  split_launch_args,
  workdir_of,
)

ACTIONS = ('run', 'status', 'logs', 'stop')
SCRIPT_NAME = 'slurm-job.sbatch'
LOG_PATTERN = 'slurm-%j.out'  # %j: the job id, the same across requeues, so a resumed run appends
# Flags that a --cluster file may set, with their types.
FILE_KEYS = {'nodes': int, 'gpus_per_node': int, 'processes': str, 'cpus_per_task': int, 'time': str,
             'partition': str, 'account': str, 'qos': str, 'mem': str, 'sbatch': list, 'setup': str,
             'python': str, 'requeue': bool, 'stop_before': int, 'log_dir': str}


def _parser() -> ArgumentParser:
  p = ArgumentParser(prog='jaxlab slurm')
  p.add_argument('action', nargs='?', default='run', choices=ACTIONS)
  p.add_argument('--cluster', help='TOML file of defaults for the flags below (e.g. account, partition, setup)')
  p.add_argument('--nodes', type=int, default=1)
  p.add_argument('--gpus-per-node', type=int, default=1, help='0 on a CPU cluster')
  p.add_argument('--processes', choices=('per-gpu', 'per-node'), default='per-gpu',
                 help='one JAX process per GPU (default) or one per node driving all its GPUs')
  p.add_argument('--cpus-per-task', type=int, default=0, help='0: the cluster default')
  p.add_argument('--time', help='time limit, e.g. 24:00:00 (default: the partition\'s)')
  p.add_argument('--partition')
  p.add_argument('--account')
  p.add_argument('--qos')
  p.add_argument('--mem', help='memory per node, e.g. 200G')
  p.add_argument('--sbatch', action='append', default=[], metavar='OPTION',
                 help='an extra #SBATCH line, e.g. --sbatch=--constraint=a100 (repeatable)')
  p.add_argument('--setup', default='', help='shell line run before the job, e.g. "module load cuda; source venv/bin/activate"')
  p.add_argument('--python', default=sys.executable, help='the interpreter on the compute nodes (default: this one)')
  p.add_argument('--job-name', help='default: jaxlab-<workdir name>')
  p.add_argument('--requeue', action=argparse.BooleanOptionalAction, default=True,
                 help='at the time limit, checkpoint and requeue the job (default: on)')
  p.add_argument('--stop-before', type=int, default=300, help='seconds before the time limit to checkpoint and requeue')
  p.add_argument('--log-dir', help='folder of the script and job logs (default: the launch --workdir, else logs)')
  p.add_argument('--lines', type=int, default=50, help='logs: how many lines')
  p.add_argument('--dry-run', action='store_true', help='print the script and the sbatch command, submit nothing')
  return p


def _file_defaults(path: str) -> dict[str, object]:
  """The --cluster file's settings, checked against FILE_KEYS."""
  try:
    with open(path, 'rb') as f:
      values = tomllib.load(f)
  except OSError as e:
    raise UsageError(f'--cluster {path}: {e.strerror or e}') from None
  except tomllib.TOMLDecodeError as e:
    raise UsageError(f'--cluster {path} is not valid TOML: {e}') from None
  for key, value in values.items():
    if key not in FILE_KEYS:
      raise UsageError(f'--cluster {path}: unknown key {key!r}; known: {", ".join(sorted(FILE_KEYS))}')
    if not isinstance(value, FILE_KEYS[key]) or (FILE_KEYS[key] is int and isinstance(value, bool)):
      raise UsageError(f'--cluster {path}: {key} must be a {FILE_KEYS[key].__name__}, got {value!r}')
  return values


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(options, launch.py arguments); flags win over the --cluster file."""
  own, launch_args = split_launch_args(argv)
  parser = _parser()
  first = parser.parse_args(own)
  if first.cluster:
    parser.set_defaults(**_file_defaults(first.cluster))
  o = parser.parse_args(own)
  if o.action == 'run' and not launch_args:
    raise UsageError('give the launch.py arguments after `--`, e.g. -- --config=configs/mnist1d/cnn.py')
  _check(o)
  o.job_name = o.job_name or job_name(launch_args)
  return o, launch_args


def _check(o: argparse.Namespace) -> None:
  for name in ('nodes', 'gpus_per_node', 'cpus_per_task', 'stop_before'):
    if getattr(o, name) < (1 if name == 'nodes' else 0):
      raise UsageError(f'--{name.replace("_", "-")} must be {"positive" if name == "nodes" else ">= 0"}, '
                       f'got {getattr(o, name)}')
  # These become `#SBATCH --key=value` lines, which sbatch splits at whitespace; a line break would
  # even start a new line of the script.
  for name in ('time', 'partition', 'account', 'qos', 'mem', 'job_name'):
    value = getattr(o, name)
    if value is not None and (not value or re.search(r'\s', value)):
      raise UsageError(f'--{name.replace("_", "-")} must be one word without spaces, got {value!r}')
  for line in o.sbatch:
    if not line.strip() or re.search(r'[\r\n]', line):
      raise UsageError(f'--sbatch must be one non-empty line, got {line!r}')
  if re.search(r'[\r\n]', o.setup):
    raise UsageError('--setup must be one line (join commands with ; or &&)')


def job_name(launch_args: Sequence[str]) -> str:
  """jaxlab-<the run's workdir name>: what status/logs/stop find the job by."""
  workdir = workdir_of(launch_args)
  config = flag_value(launch_args, 'config')
  if workdir is None and config is not None:
    workdir = default_workdir(config)
  name = os.path.basename((workdir or '').rstrip('/'))
  return 'jaxlab' + ('-' + re.sub(r'[^\w.-]', '_', name) if name else '')


def tasks_per_node(o: argparse.Namespace) -> int:
  return o.gpus_per_node if o.processes == 'per-gpu' and o.gpus_per_node else 1


def _directives(o: argparse.Namespace) -> list[str]:
  options = [f'--job-name={o.job_name}', f'--nodes={o.nodes}', f'--ntasks-per-node={tasks_per_node(o)}']
  if o.gpus_per_node:
    options.append(f'--gpus-per-node={o.gpus_per_node}')
  if o.cpus_per_task:
    options.append(f'--cpus-per-task={o.cpus_per_task}')
  options += [f'--{name}={getattr(o, name)}' for name in ('time', 'partition', 'account', 'qos', 'mem')
              if getattr(o, name)]
  options.append('--requeue' if o.requeue else '--no-requeue')
  if o.requeue:
    options.append(f'--signal=B:TERM@{o.stop_before}')  # B: to this script only; it tells the processes
  options += [line.removeprefix('#SBATCH').strip() for line in o.sbatch]
  return [f'#SBATCH {option}' for option in options]


def script(o: argparse.Namespace, launch_args: Sequence[str], launch_py: str, workdir: str) -> str:
  """The sbatch script: resources, the setup line, and `srun` of launch.py in `workdir`."""
  lines = ['#!/bin/bash', *_directives(o), '', 'set -uo pipefail', f'cd {shlex.quote(workdir)}']
  if o.setup:
    lines.append(o.setup)
  if o.cpus_per_task:
    lines.append('export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"')  # srun no longer inherits it from sbatch
  if o.processes == 'per-node' and o.gpus_per_node > 1:
    # One process drives all GPUs of its node (JAX would otherwise give it the GPU of its local rank only).
    lines.append(f'export JAX_LOCAL_DEVICE_IDS={",".join(map(str, range(o.gpus_per_node)))}')
  if o.requeue:
    lines += ['requeue() {',
              '  echo "jaxlab: SIGTERM before the time limit: checkpointing, then requeueing job $SLURM_JOB_ID"',
              '  scancel --signal=TERM "$SLURM_JOB_ID"  # to every process of the job, not to this script',
              '  [ -n "${run:-}" ] && wait "$run"',
              '  scontrol requeue "$SLURM_JOB_ID"',
              '  exit 0',
              '}',
              'trap requeue TERM']
  command = shlex.join(['srun', '--kill-on-bad-exit=1', o.python, launch_py, *launch_args])
  lines += [f'{command} &', 'run=$!', 'wait "$run"', '']
  return '\n'.join(lines)


def sbatch_cmd(script_path: str, log_path: str) -> list[str]:
  return ['sbatch', '--parsable', f'--output={log_path}', script_path]


def squeue_cmd(name: str) -> list[str]:
  return ['squeue', f'--user={getpass.getuser()}', f'--name={name}']


def stop_cmds(name: str) -> list[list[str]]:
  """SIGTERM to the running job's processes (they checkpoint and exit), then cancel a pending one."""
  user = f'--user={getpass.getuser()}'
  return [['scancel', user, f'--name={name}', '--state=RUNNING', '--signal=TERM'],
          ['scancel', user, f'--name={name}', '--state=PENDING']]


def _need(*programs: str) -> None:
  for program in programs:
    if shutil.which(program) is None:
      raise UsageError(f'{program} not found on PATH; run this on a SLURM login node')


def submit(o: argparse.Namespace, launch_args: Sequence[str], root: str) -> int:
  logs = os.path.abspath(log_dir(o.log_dir, launch_args))
  text = script(o, launch_args, os.path.join(root, 'launch.py'), os.getcwd())
  script_path = os.path.join(logs, SCRIPT_NAME)
  command = sbatch_cmd(script_path, os.path.join(logs, LOG_PATTERN))
  if o.dry_run:
    print(f'# {script_path}\n{text}\n# submit with:\n{shlex.join(command)}', flush=True)
    return 0
  _need('sbatch')
  os.makedirs(logs, exist_ok=True)  # sbatch does not create the folder of its --output
  with open(script_path, 'w') as f:
    f.write(text)
  proc = subprocess.run(command, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'sbatch failed: {(proc.stderr or proc.stdout).strip()}')
  job = proc.stdout.strip().split(';')[0]
  print(f'Submitted job {job} ({o.job_name}): {o.nodes} node(s) x {tasks_per_node(o)} process(es); '
        f'script {script_path}; log {os.path.join(logs, LOG_PATTERN.replace("%j", job))}', flush=True)
  return 0


def print_logs(o: argparse.Namespace, launch_args: Sequence[str]) -> int:
  logs = log_dir(o.log_dir, launch_args)
  found = glob.glob(os.path.join(glob.escape(logs), LOG_PATTERN.replace('%j', '*')))
  if not found:
    raise UsageError(f'no SLURM job log in {logs} (give the run\'s --workdir after `--`, or --log-dir)')
  newest = max(found, key=os.path.getmtime)
  with open(newest, errors='replace') as f:
    lines = f.readlines()[-o.lines:]
  print(f'==> {newest} <==\n{"".join(lines)}', end='', flush=True)
  return 0


def _call(argv: list[str], dry_run: bool) -> int:
  print(('' if dry_run else '+ ') + shlex.join(argv), flush=True)
  if dry_run:
    return 0
  _need(argv[0])
  return subprocess.run(argv).returncode


def main(argv: Sequence[str], root: str = '.') -> int:
  """Entry point of `launch.py slurm`; returns the exit status."""
  try:
    o, launch_args = parse(argv)
    if o.action == 'run':
      return submit(o, launch_args, os.path.abspath(root))
    if o.action == 'logs':
      return print_logs(o, launch_args)
    if o.action == 'status':
      return _call(squeue_cmd(o.job_name), o.dry_run)
    return max(_call(command, o.dry_run) for command in stop_cmds(o.job_name))
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except RuntimeError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
