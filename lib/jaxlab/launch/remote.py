"""What the cluster launchers (`launch.py tpu`, `launch.py slurm`) share: argument parsing with
one-line errors, and where a launch.py command line puts its run and logs."""

from __future__ import annotations

import argparse
import os
from typing import Sequence

DEFAULT_LOG_DIR = 'logs'


class UsageError(Exception):
  """Bad arguments: one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse that raises UsageError instead of printing usage and exiting, and spells options with
  underscores as every jaxlab command does (`--retry_wait`); the hyphenated spelling of gcloud and sbatch
  (`--retry-wait`, `--gpus-per-node`) stays an alias."""

  def add_argument(self, *names: str, **kwargs):
    underscored = [f'--{n[2:].replace("-", "_")}' for n in names if n.startswith('--') and '-' in n[2:]]
    return super().add_argument(*underscored, *names, **kwargs)

  def error(self, message: str):
    raise UsageError(message)


def split_launch_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, launch.py's arguments): everything after the first `--`."""
  argv = list(argv)
  split = argv.index('--') if '--' in argv else len(argv)
  return argv[:split], argv[split + 1:]


def flag_value(launch_args: Sequence[str], name: str) -> str | None:
  """The value of `--name=X` or `--name X` in a launch.py command line."""
  for i, arg in enumerate(launch_args):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(launch_args):
      return launch_args[i + 1]
  return None


def workdir_of(launch_args: Sequence[str]) -> str | None:
  """The --workdir of a launch.py command line."""
  return flag_value(launch_args, 'workdir')


def default_workdir(config_spec: str, prefix: str = '') -> str:
  """runs/<prefix><config dir>-<config name>: where a run of `path/to/config.py[:arg]` goes without --workdir."""
  path = config_spec.partition(':')[0]
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', f'{prefix}{os.path.basename(os.path.dirname(path))}-{name}')


def log_dir(explicit: str | None, launch_args: Sequence[str]) -> str:
  """Where a launcher keeps its logs: `explicit`, else the run's workdir unless that is a bucket (gs://)."""
  workdir = workdir_of(launch_args)
  return explicit or (workdir if workdir and '://' not in workdir else DEFAULT_LOG_DIR)
