"""`launch.py tpu`: the same launch command on every worker of a Cloud TPU VM slice, via gcloud.

  python launch.py tpu [run] --tpu NAME --zone ZONE [--accelerator v4-8] [--spot] [--watch]
                             [--revision REV] [--dry-run] -- <launch.py arguments>
  python launch.py tpu status|logs|stop|delete --tpu NAME --zone ZONE [-- <launch.py arguments>]

`run` creates the slice if it does not exist (or was preempted), copies the code (the working
tree, or `git archive REV`), installs it with TPU JAX, and runs `python3 launch.py <arguments>`
on all workers, streaming their output and appending it to `<workdir>/tpu-<host>.log` on each
worker. With `--watch` a preempted slice is re-created and the same command rerun; the run
resumes from its newest checkpoint. `stop` sends the run SIGTERM (it saves a checkpoint and
exits); `logs` prints the end of every worker's log; `status` describes the slice.

Commands are argv lists; every value that reaches the remote shell goes through shlex.quote.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Sequence

from jaxlab.launch.remote import ArgumentParser, UsageError, log_dir, split_launch_args

ACTIONS = ('run', 'status', 'logs', 'stop', 'delete')
REMOTE_DIR = '~/jaxlab'  # code, installs and relative workdirs live here on every worker
ARCHIVE = 'jaxlab.tar.gz'
PID_FILE = '.launch.pid'
# Runtime images by TPU generation (cloud.google.com/tpu/docs/runtimes).
VERSIONS = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base', 'v4': 'tpu-ubuntu2204-base',
            'v5litepod': 'v2-alpha-tpuv5-lite', 'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
GONE = ('', 'PREEMPTED', 'TERMINATED')  # '' = describe found no such TPU


GCLOUD_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._:-]*')  # TPU, zone, project, type, image names


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(options, launch.py arguments): everything after the first `--` is passed on untouched."""
  own, remote = split_launch_args(argv)
  p = ArgumentParser(prog='jaxlab tpu')
  p.add_argument('action', nargs='?', default='run', choices=ACTIONS)
  p.add_argument('--tpu', required=True, help='TPU VM name')
  p.add_argument('--zone', required=True)
  p.add_argument('--project', help='GCP project (default: gcloud config)')
  p.add_argument('--accelerator', default='v4-8', help='accelerator type, e.g. v4-8, v5litepod-16')
  p.add_argument('--version', help='TPU runtime image (default: by TPU generation)')
  p.add_argument('--spot', action='store_true', help='create a spot (preemptible) slice')
  p.add_argument('--watch', action='store_true', help='re-create a preempted slice and rerun the command')
  p.add_argument('--retry-wait', type=float, default=60.0, help='seconds between re-creation attempts')
  p.add_argument('--revision', help='copy this git revision (git archive) instead of the working tree')
  p.add_argument('--log-dir', help='log folder on the workers (default: the launch --workdir, else logs)')
  p.add_argument('--dry-run', action='store_true', help='print the gcloud commands, run nothing')
  options = p.parse_args(own)
  for name in ('tpu', 'zone', 'project', 'accelerator', 'version'):
    value = getattr(options, name)
    if value is not None and not GCLOUD_NAME.fullmatch(value):  # gcloud would read `--tpu=--flag` as a flag
      raise UsageError(f'--{name} {value!r} is not a Google Cloud name (letters, digits, - _ . : only, not '
                       'starting with -)')
  if options.action == 'run' and not remote:
    raise UsageError('give the launch.py arguments after `--`, e.g. -- --config=configs/mnist1d/cnn.py')
  return options, remote


def runtime_version(accelerator: str) -> str:
  generation = accelerator.split('-')[0]
  if generation not in VERSIONS:
    raise UsageError(f'unknown accelerator {accelerator!r}; pass --version for its runtime image')
  return VERSIONS[generation]


def _project(o: argparse.Namespace) -> list[str]:
  return [f'--project={o.project}'] if o.project else []


def _tpu_vm(o: argparse.Namespace, verb: str, *args: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, o.tpu, f'--zone={o.zone}', *_project(o), *args]


def describe_cmd(o: argparse.Namespace) -> list[str]:
  return _tpu_vm(o, 'describe', '--format=value(state)')


def create_cmd(o: argparse.Namespace) -> list[str]:
  return _tpu_vm(o, 'create', f'--accelerator-type={o.accelerator}',
                 f'--version={o.version or runtime_version(o.accelerator)}', *(['--spot'] if o.spot else []))


def delete_cmd(o: argparse.Namespace) -> list[str]:
  return _tpu_vm(o, 'delete', '--quiet')


def ssh_cmd(o: argparse.Namespace, script: str) -> list[str]:
  """`script` runs under bash on every worker; it is one quoted argument of `bash -c`."""
  return _tpu_vm(o, 'ssh', '--worker=all', f'--command=bash -c {shlex.quote(script)}')


def scp_cmd(o: argparse.Namespace, archive: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive, f'{o.tpu}:{ARCHIVE}', '--worker=all',
          f'--zone={o.zone}', *_project(o)]


def install_script() -> str:
  return (f'mkdir -p {REMOTE_DIR} && tar xzf ~/{ARCHIVE} -C {REMOTE_DIR} && cd {REMOTE_DIR} && '
          + shlex.join(['python3', '-m', 'pip', 'install', '-q', '-e', '.', 'jax[tpu]']))


def run_script(launch_args: Sequence[str], logs: str) -> str:
  """Runs launch.py with its output shown and appended to <logs>/tpu-<host>.log; keeps its pid for `stop`."""
  log = f'{shlex.quote(logs)}/tpu-"$(hostname)".log'
  return (f'cd {REMOTE_DIR} && mkdir -p {shlex.quote(logs)} && '
          f'{shlex.join(["python3", "launch.py", *launch_args])} > >(tee -a {log}) 2>&1 & '
          f'echo $! > {REMOTE_DIR}/{PID_FILE}; wait $!')


def stop_script() -> str:
  return f'test -f {REMOTE_DIR}/{PID_FILE} && kill -TERM "$(cat {REMOTE_DIR}/{PID_FILE})" || echo no run'


def logs_script(logs: str, lines: int = 50) -> str:
  return f'cd {REMOTE_DIR} && tail -n {lines} {shlex.quote(logs)}/tpu-"$(hostname)".log'


def make_archive(root: str, path: str, revision: str | None) -> None:
  """The code to copy: `git archive` of `revision`, or the working tree's tracked and
  not-ignored untracked files (so local runs/, .venv/ and caches stay behind)."""
  if revision:
    subprocess.run(['git', '-C', root, 'archive', '--format=tar.gz', f'--output={path}', revision], check=True)
    return
  listed = subprocess.run(['git', '-C', root, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                          check=True, capture_output=True).stdout.decode().split('\0')
  with tarfile.open(path, 'w:gz') as tar:
    for name in filter(None, listed):
      if os.path.exists(os.path.join(root, name)):  # listed but deleted in the working tree
        tar.add(os.path.join(root, name), arcname=name)


class Gcloud:
  """Runs (or, dry, prints) gcloud commands."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run
    if not dry_run and shutil.which('gcloud') is None:
      raise UsageError('gcloud not found on PATH; install the Google Cloud CLI (cloud.google.com/sdk)')

  def call(self, argv: list[str]) -> int:
    print(('' if self.dry_run else '+ ') + shlex.join(argv), flush=True)
    return 0 if self.dry_run else subprocess.run(argv).returncode

  def state(self, o: argparse.Namespace) -> str:
    """The slice's state (READY, PREEMPTED, ...), or '' when it does not exist."""
    if self.dry_run:
      print(shlex.join(describe_cmd(o)) + '   # create only if absent or preempted', flush=True)
      return ''
    proc = subprocess.run(describe_cmd(o), capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ''


def ensure_slice(gcloud: Gcloud, o: argparse.Namespace) -> bool:
  """Makes the slice READY; True when it is new (the code must then be copied again)."""
  state = gcloud.state(o)
  if state == 'READY':
    return False
  if state not in GONE:
    raise RuntimeError(f'TPU {o.tpu} is {state}; wait, or `launch.py tpu delete` it')
  if state:
    gcloud.call(delete_cmd(o))
  if gcloud.call(create_cmd(o)):
    raise RuntimeError(f'could not create TPU {o.tpu} ({o.accelerator}) in {o.zone}')
  return True


def run(gcloud: Gcloud, o: argparse.Namespace, launch_args: list[str], root: str) -> int:
  """Slice, code, install, run; with --watch, again after each preemption. Returns the exit status."""
  copied = False
  with tempfile.TemporaryDirectory() as tmp:
    archive = os.path.join(tmp, ARCHIVE)
    while True:
      try:
        new = ensure_slice(gcloud, o)
      except RuntimeError as e:
        if not o.watch:
          raise
        print(f'{e}; retrying in {o.retry_wait:.0f}s', file=sys.stderr, flush=True)
        time.sleep(o.retry_wait)
        continue
      if new or not copied:
        if not gcloud.dry_run:
          make_archive(root, archive, o.revision)
        for argv in (scp_cmd(o, archive), ssh_cmd(o, install_script())):
          if gcloud.call(argv):
            raise RuntimeError(f'failed: {shlex.join(argv)}')
        copied = True
      status = gcloud.call(ssh_cmd(o, run_script(launch_args, log_dir(o.log_dir, launch_args))))
      if status == 0 or gcloud.dry_run or not o.watch or gcloud.state(o) not in GONE:
        return status
      print(f'TPU {o.tpu} was preempted; re-creating it and resuming the run', file=sys.stderr, flush=True)


def main(argv: Sequence[str], root: str = '.') -> int:
  """Entry point of `launch.py tpu`; returns the exit status."""
  try:
    o, launch_args = parse(argv)
    gcloud = Gcloud(o.dry_run)
    if o.action == 'run':
      return run(gcloud, o, launch_args, root)
    commands = {'status': lambda: _tpu_vm(o, 'describe'),
                'logs': lambda: ssh_cmd(o, logs_script(log_dir(o.log_dir, launch_args))),
                'stop': lambda: ssh_cmd(o, stop_script()),
                'delete': lambda: delete_cmd(o)}
    return gcloud.call(commands[o.action]())
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (RuntimeError, subprocess.CalledProcessError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
