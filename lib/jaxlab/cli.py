"""jaxlab's command line: `jaxlab <command>` (the console script) or `python launch.py <command>` (a checkout).

Every command takes absl-style flags, `--name=value` (or `--name value`), with underscores. Each command's
own flags live beside its code, in `define_command()` of its module, which returns what the command runs;
only the chosen command's module is imported, so a flag of another command is an unknown flag. The shared
flags (config, workdir, restart, multi-process) are defined here.

Multi-process runs: --coordinator_address/--num_processes/--process_id (or JAXLAB_* env vars);
on a Cloud TPU VM and inside a SLURM job step of several tasks the job is joined automatically.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
import threading
import traceback
from typing import Any, Callable, Sequence

from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.run import stop

# name -> (module whose define_command() defines its flags and returns its runner, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    'train': ('jaxlab.run.train', 'train --config in --workdir, resuming from its newest checkpoint (the default)'),
    'bench': ('jaxlab.evaluators.bench', "time the config's training step against a hand-written loop"),
    'sweep': ('jaxlab.launch.sweep', "run every point of the config's sweep, then one table"),
    'search': ('jaxlab.launch.search', "Optuna search over the config's search space"),
    'results': ('jaxlab.launch.results', 'the table and plot of a sweep or search workdir: results SWEEP_WORKDIR'),
    'sample': ('jaxlab.evaluators.sample', 'text from a language-model run, images from a GAN or VAE run'),
    'attack': ('jaxlab.evaluators.robustness', 'accuracy of a classification run under FGSM/PGD vs epsilon'),
    'explain': ('jaxlab.evaluators.explain', 'attribution maps of a classification run, with their sanity check'),
    'cv': ('jaxlab.evaluators.cv', 'stratified k-fold cross-validation, the folds as replicas of one program'),
    'tpu': ('jaxlab.launch.tpu', 'the same command line on every worker of a Cloud TPU VM slice: tpu ... -- ARGS'),
    'slurm': ('jaxlab.launch.slurm', 'the same command line as a SLURM job: slurm ... -- ARGS'),
}
DEFAULT_COMMAND = 'train'
JOB_COMMANDS = ('train', 'bench', 'cv')  # one process of a multi-process job each, where the flags say so
STATEFUL_COMMANDS = ('train', 'cv')  # a signal saves their state; they exit 0 (see jaxlab.run.stop)
PARENT_COMMANDS = ('sweep', 'search', 'results', 'tpu', 'slurm')  # they start runs and handle signals themselves
OWN_PARSER_COMMANDS = ('tpu', 'slurm')  # their arguments after `--` are a command line passed on untouched
BOOLEAN_FLAGS = ('restart', 'norestart', 'help', 'helpfull', 'helpshort')
_ENDING = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Invocation:
  """What a command reads of its command line, besides its own flags."""

  config: Any  # --config, loaded, with its --config.* overrides applied
  config_spec: str  # --config as given: path.py[:arg]
  overrides: dict[str, Any]  # the --config.* overrides
  workdir_flag: str | None
  restart: bool
  args: list[str]  # positional arguments after the command
  launcher: tuple[str, ...]  # the command line that starts a child run (sweep, search)

  def workdir(self, prefix: str = '') -> str:
    """--workdir as given (an empty one is refused), else runs/<prefix><config dir>-<config name>."""
    from jaxlab.launch.remote import default_workdir
    if self.workdir_flag is None:
      return default_workdir(self.config_spec, prefix)
    if not self.workdir_flag.strip():
      raise ConfigError('--workdir is empty; give a directory, or leave the flag out for the default under runs/')
    return self.workdir_flag

  def run_to_read(self, command: str, what: str) -> str:
    """--workdir of a command that reads a finished run (it has no default)."""
    if not self.workdir_flag:
      raise ConfigError(f'{command} needs --workdir, {what}')
    return self.workdir_flag


def command_of(argv: Sequence[str]) -> str:
  """The command named on a command line: its first word that is one (a flag's value is not), else train."""
  expects_value = False
  for arg in argv[1:]:
    if arg == '--':
      break
    if expects_value:
      expects_value = False
    elif arg.startswith('-'):
      expects_value = '=' not in arg and arg.lstrip('-') not in BOOLEAN_FLAGS and not arg.startswith('--config.')
    elif arg in COMMANDS:
      return arg
  return DEFAULT_COMMAND


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f'  {name:<{width}}  {help_line}' for name, (_, help_line) in COMMANDS.items()]
  return ('usage: jaxlab [COMMAND] [--config=PATH.py[:ARG]] [--config.KEY=VALUE ...] [--workdir=DIR] [flags]\n'
          '       (python launch.py ... from a checkout)\n\ncommands:\n' + '\n'.join(lines) +
          '\n\n`jaxlab COMMAND --help` lists the flags of COMMAND.')


def command_help(command: str) -> str:
  """`command`'s usage, its own flags and the shared ones, as absl lists them (after `_define_flags`)."""
  from absl import flags
  module, help_line = COMMANDS[command]
  listing = lambda name: '\n'.join(line for line in flags.FLAGS.module_help(name).splitlines()
                                    if line.startswith(' '))  # without the module's name
  own, shared = listing(module) or '  (none)', listing(__name__)
  return (f'usage: jaxlab {command} [--config=PATH.py[:ARG]] [--config.KEY=VALUE ...] [--workdir=DIR] [flags]\n\n'
          f'{help_line}\n\nflags of {command}:\n{own}\n\nflags of every command:\n{shared}')


def main(argv: Sequence[str] | None = None, root: str | None = None, launcher: Sequence[str] | None = None) -> None:
  """Runs the command line `argv` (default sys.argv); `root`: the project folder (configs/, launch.py)."""
  argv = list(sys.argv if argv is None else argv)
  root = root or _project_root()
  launcher = tuple(launcher or (sys.executable, '-m', 'jaxlab.cli'))
  if argv[1:2] in (['--help'], ['-h'], ['help']) or argv[1:] == ['--helpshort']:
    print(usage())
    return
  command = command_of(argv)
  if command in OWN_PARSER_COMMANDS:
    module = importlib.import_module(COMMANDS[command][0])
    sys.exit(module.main(argv[argv.index(command) + 1:], root=root))
  if command not in PARENT_COMMANDS:
    # First thing: from here on SIGTERM or a Ctrl-C during start-up is one line (`_stopped`), not a traceback.
    stop.install(end=None if command in STATEFUL_COMMANDS else lambda stopped: _stopped(command, stopped))
  try:
    from absl import app
    run = _define_flags(command)
    if any(a in ('--help', '-h', '--helpshort') for a in argv[1:argv.index('--') if '--' in argv else None]):
      print(command_help(command))
      return
    app.run(lambda args: _main(command, run, args, launcher), argv=argv,
            flags_parser=lambda args: _parse(args, command, root))
  except stop.Stopped as e:
    _stopped(command, e)


def _stopped(command: str, stopped: stop.Stopped) -> None:
  """A training run stopped before its state existed has lost nothing: exit 0, as after its checkpoint.
  Any other command's work was cut short: one line and status 128 + the signal's number."""
  if command in STATEFUL_COMMANDS:
    sys.exit(0)
  _ENDING.acquire()  # the main thread's handler and stop's watching thread may both come here: one line
  print(f'error: stopped by {stopped.signal_name} before {command} finished; it wrote no results', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  # An XLA computation may still be running on its own threads (an attack's PGD loop): tearing the
  # interpreter down under it sometimes crashed (SIGSEGV instead of the status). Nothing is left to save.
  os._exit(stopped.exit_code)


def _project_root() -> str:
  """The folder above lib/ of an editable install or a checkout: where configs/ lies."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_CONFIG = _WORKDIR = _RESTART = _COORDINATOR = _NUM_PROCESSES = _PROCESS_ID = None


def _define_flags(command: str) -> Callable[[Invocation], None]:
  """The shared flags and `command`'s own; returns what `command` runs."""
  global _CONFIG, _WORKDIR, _RESTART, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID
  from absl import flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, `path.py` or `path.py:arg`.',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config dir>-<config name>).')
  _RESTART = flags.DEFINE_bool('restart', False, 'Move an existing run in --workdir aside and start over.')
  _COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
  _NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  _PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: index of this process.')
  return importlib.import_module(COMMANDS[command][0]).define_command()


def _fail(message: str, code: int = 2) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _parse(argv: list[str], command: str, root: str) -> list[str]:
  """absl flag parsing with one-line errors (exit 2) instead of tracebacks; returns the positional arguments."""
  from absl import flags
  from ml_collections import config_flags
  if not any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
    argv = [argv[0], f'--config={os.path.join(root, "configs", "mnist1d", "cnn.py")}', *argv[1:]]
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error_message(str(e)))
  except Exception as e:  # noqa: BLE001 - an error inside the config file, or an override of a missing key
    inside = _config_file_frame(e, argv)
    if isinstance(e, AttributeError) and "has no attribute 'get_config'" in str(e):
      _fail('the config file defines no get_config(arg=None)')
    if inside is None and isinstance(e, (AttributeError, KeyError)):
      _fail(_unknown_key_message(str(e), argv))
    where = f' ({inside.filename}:{inside.lineno})' if inside else ''
    _fail(f'could not load the config{where}: {type(e).__name__}: {e}')
  path = config_flags.get_config_filename(flags.FLAGS['config']).partition(':')[0]
  if not os.path.isfile(path):
    _fail(f'config file not found: {path}')
  if not hasattr(_CONFIG.value, 'lock'):
    _fail(f'could not load config {path}')
  args = rest[1:]
  if args[:1] == [command]:
    args = args[1:]
  if command == 'results':
    if len(args) != 1:
      _fail('usage: launch.py results SWEEP_WORKDIR [--metric=NAME]')
  elif args:
    _fail(f'unknown command {" ".join(args)!r}; commands: {", ".join(COMMANDS)}')
  return [rest[0], *args]


def _flag_error_message(error: str) -> str:
  """absl's message, or for an exception raised inside the config file (which ml_collections reports with its
  traceback) one line: where in the config file and the exception."""
  if 'Error whilst parsing config file' not in error:
    return error
  exception = [line for line in error.splitlines() if line.strip()][-1]
  frames = re.findall(r'File "([^"]+)", line (\d+)', error)
  where = f' ({frames[-1][0]}:{frames[-1][1]})' if frames else ''
  return f'could not load the config{where}: {exception}'


def _config_file_frame(error: BaseException, argv: list[str]) -> traceback.FrameSummary | None:
  """The innermost frame of the error's traceback that lies in the config file named in argv."""
  spec = next((b for a, b in zip(argv, argv[1:] + ['']) if a == '--config'), None) or next(
      (a[len('--config='):] for a in argv if a.startswith('--config=')), '')
  path = os.path.abspath(spec.partition(':')[0])
  frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
  return frames[-1] if frames else None


def _unknown_key_message(error: str, argv: list[str]) -> str:
  names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", error)
  key = names[0] if names else error
  overrides = [a.split('=')[0][len('--config.'):] for a in argv if a.startswith('--config.')]
  full = next((o for o in overrides if key in o.split('.')), key)
  hint = re.search(r'Did you mean "([^"]+)"', error)
  return f'unknown config key {full!r}' + (f' (did you mean {hint.group(1)!r}?)' if hint else '')


def _main(command: str, run: Callable[[Invocation], None], argv: list[str], launcher: tuple[str, ...]) -> None:
  from absl import flags, logging
  from ml_collections import config_flags
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows it
  invocation = Invocation(
      config=_CONFIG.value, config_spec=config_flags.get_config_filename(flags.FLAGS['config']),
      overrides=config_flags.get_override_values(flags.FLAGS['config']), workdir_flag=_WORKDIR.value,
      restart=_RESTART.value, args=argv[1:], launcher=launcher)
  try:
    if command in JOB_COMMANDS:
      _join_job()
    if command not in PARENT_COMMANDS:
      from jaxlab import parallel
      parallel.enable_compilation_cache()
    run(invocation)
  except JaxlabError as e:
    _fail(str(e), e.exit_code)
  except KeyboardInterrupt:
    _fail('aborted by a second Ctrl-C; the newest checkpoint on disk is where the next run resumes', 130)


def _join_job() -> None:
  """This process joins its multi-process job, if the flags, the TPU VM or SLURM say it is one."""
  from jaxlab.parallel import distributed
  settings = distributed.resolve(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if settings is not None:
    stop.uninstall()  # jax.distributed relays SIGTERM to every process of the job itself
  distributed.initialize(settings)


if __name__ == '__main__':
  main()
