"""Hyper-parameter search with Optuna (TPE, median pruning), trials run by the sweep's runner.

A config file may define, next to `get_config`, a search space as plain data; values that are
not distributions are fixed overrides for every trial:

    def search(arg=None):
      return {'optimizer.learning_rate': loguniform(1e-4, 1e-1), 'model.channels': choice([8, 16, 25]),
              'data.validation_size': 500}

Optuna is an optional extra (`pip install -e '.[search]'`) and only this module imports it,
inside `run`. The study lives in `<workdir>/study.db`, so the same command continues a search.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from absl import flags

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.launch import results
from jaxlab.launch import sweep as sweep_lib
from jaxlab.launch.results import MANIFEST, STUDY_FILE, read_summary
from jaxlab.observe import logging
from jaxlab.run import workdir_lock

BEST_FILE = 'best.json'
STUDY_NAME = 'search'
INSTALL_HINT = "pip install -e '.[search]'"


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched config value: a float or int range (optionally log-scaled) or a list of choices."""
  kind: str  # 'float', 'int' or 'choice'
  low: float | int | None = None
  high: float | int | None = None
  log: bool = False
  choices: tuple[Any, ...] = ()


def _range(kind: str, low: float, high: float, log: bool) -> Param:
  if not low < high or (log and low <= 0):
    raise ConfigError(f'search range needs low < high{" and low > 0 (log scale)" if log else ""}, got [{low}, {high}]')
  return Param(kind, low, high, log)


def uniform(low: float, high: float) -> Param:
  """A float drawn uniformly from [low, high]."""
  return _range('float', float(low), float(high), False)


def loguniform(low: float, high: float) -> Param:
  """A float drawn uniformly in log space from [low, high] (learning rates, decays)."""
  return _range('float', float(low), float(high), True)


def intrange(low: int, high: int, log: bool = False) -> Param:
  """An int from [low, high], both included."""
  if not (isinstance(low, int) and isinstance(high, int)):
    raise ConfigError(f'intrange needs int bounds, got [{low!r}, {high!r}]')
  return _range('int', low, high, log)


def choice(values: Sequence[Any]) -> Param:
  """One of `values`: bools, ints, floats or strings (what Optuna stores)."""
  values = tuple(values)
  if not values or not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
    raise ConfigError(f'choice() needs a non-empty list of bools, ints, floats or strings, got {list(values)!r}')
  return Param('choice', choices=values)


def load(spec: str) -> tuple[dict[str, Param], dict[str, Any]]:
  """`search(arg)` of the config file `path.py[:arg]`, split into (searched params, fixed overrides)."""
  space = config_lib.call(spec, 'search')
  if not isinstance(space, dict) or not any(isinstance(v, Param) for v in space.values()):
    raise ConfigError(f'{spec}: search() must return a dict with at least one uniform/loguniform/intrange/choice, '
                      f'got {space!r:.200}')
  params = {k: v for k, v in space.items() if isinstance(v, Param)}
  return params, {k: v for k, v in space.items() if not isinstance(v, Param)}


def distributions(params: Mapping[str, Param], optuna: Any) -> dict[str, Any]:
  """The params as Optuna distributions (`optuna` is the module, imported by the caller)."""
  d = optuna.distributions
  make = {'float': lambda p: d.FloatDistribution(p.low, p.high, log=p.log),
          'int': lambda p: d.IntDistribution(p.low, p.high, log=p.log),
          'choice': lambda p: d.CategoricalDistribution(p.choices)}
  return {key: make[p.kind](p) for key, p in params.items()}


def corners(params: Mapping[str, Param]) -> list[dict[str, Any]]:
  """Two points that between them use every bound and every choice's type, to check against the config."""
  ends = {k: (p.choices[0], p.choices[-1]) if p.kind == 'choice' else (p.low, p.high) for k, p in params.items()}
  return [{k: v[i] for k, v in ends.items()} for i in (0, 1)]


def split_metric(metric: str) -> tuple[str, str]:
  """'validation_accuracy' -> ('validation', 'accuracy'); a test-split metric is refused."""
  split, _, name = metric.partition('_')
  if not name:
    raise ConfigError(f'--metric must be <split>_<name>, e.g. validation_accuracy; got {metric!r}')
  if split == 'test':
    raise ConfigError(f'--metric {metric}: a search must not tune on the test set; use a validation metric '
                      '(set data.validation_size)')
  return split, name


def read_metric(path: str, offset: int, split: str, name: str) -> tuple[int, list[tuple[int, float]]]:
  """The (step, value) records of `split`/`name` appended to metrics.jsonl after byte `offset`,
  and the offset after the last complete line (a line being written is read next time)."""
  try:
    with open(path, 'rb') as f:
      f.seek(offset)
      data = f.read()
  except OSError:
    return offset, []
  complete = data[:data.rfind(b'\n') + 1]
  found = []
  for line in complete.splitlines():
    record = logging.parse_line(line)
    if record is not None and record['split'] == split and isinstance(record.get(name), (int, float)):
      found.append((record['step'], float(record[name])))
  return offset + len(complete), found


def feed(trial: Any, values: Sequence[tuple[int, float]], reported: set[int], proc: subprocess.Popen) -> int | None:
  """Reports new (step, value)s to the trial; on the pruner's word sends the run SIGTERM (it saves a
  checkpoint and exits) and returns the step it was pruned at."""
  for step, value in values:
    if step in reported:  # a resumed run evaluates some steps again
      continue
    reported.add(step)
    trial.report(value, step)
    if trial.should_prune():
      proc.send_signal(signal.SIGTERM)
      return step
  return None


def import_optuna() -> Any:
  try:
    import optuna
  except ImportError:
    raise ConfigError(f'search needs optuna, an optional extra: {INSTALL_HINT}') from None
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own lines
  return optuna


def open_study(optuna: Any, workdir: str, metric: str, direction: str, seed: int) -> Any:
  """The study in `<workdir>/study.db`, created or continued; a different metric or direction is an error."""
  storage = optuna.storages.RDBStorage(f'sqlite:///{os.path.abspath(os.path.join(workdir, STUDY_FILE))}')
  study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True,
                              pruner=optuna.pruners.MedianPruner())
  stored = study.user_attrs.get('metric'), study.direction.name.lower()
  if study.trials and stored != (metric, direction):
    raise ConfigError(f'{workdir} holds a search of {stored[0]} ({stored[1]}), not {metric} ({direction}); '
                      'use another --workdir')
  study.set_user_attr('metric', metric)
  # Offset by the trials so far: a continued search must not replay the first run's random draws.
  study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
  return study


def trial_name(number: int) -> str:
  return f'trial-{number:04d}'


def write_manifest(workdir: str, spec: str, common: Mapping[str, Any], study: Any) -> None:
  """sweep.json listing every trial as a point, so results.py (and `launch.py results`) read the search."""
  points = [{'name': trial_name(t.number), 'overrides': t.params} for t in study.trials]
  with open(os.path.join(workdir, MANIFEST), 'w') as f:
    json.dump({'config': spec, 'common': {k: sweep_lib.format_value(v) for k, v in common.items()},
               'points': points}, f, indent=2)


def write_best(workdir: str, study: Any, metric: str) -> dict[str, Any]:
  best = study.best_trial
  entry = {'metric': metric, 'direction': study.direction.name.lower(), 'value': best.value,
           'trial': best.number, 'params': best.params, 'workdir': os.path.join(workdir, trial_name(best.number))}
  with open(os.path.join(workdir, BEST_FILE), 'w') as f:
    json.dump(entry, f, indent=2)
  return entry


@dataclasses.dataclass
class _Running:
  """A trial's process and what the search has read of its metrics.jsonl."""
  proc: subprocess.Popen
  trial: Any
  num_steps: int
  reported: set[int]
  began: float = dataclasses.field(default_factory=time.perf_counter)
  offset: int = 0
  pruned_at: int | None = None


def run(spec: str, workdir: str, *, trials: int, common: Mapping[str, Any] = {}, parallel: int = 1,
        launcher: Sequence[str] = (sys.executable, 'launch.py'), metric: str = 'validation_accuracy',
        direction: str = 'maximize', seed: int = 0, wait: float = sweep_lib.DEFAULT_WAIT_S) -> int:
  """Runs the search of `spec` until the study in `workdir` has `trials` trials; returns how many failed.

  Each trial is one `launch.py` process in `<workdir>/trial-NNNN` (the sweep's runner); its
  evaluations of `metric` feed the pruner as they appear. Trials that a stopped search left
  running resume from their checkpoints first.
  """
  split, name = split_metric(metric)
  sweep_lib.check_run_flags(parallel, wait)
  if trials < 1:
    raise ConfigError(f'--trials must be >= 1, got {trials}')
  if direction not in ('maximize', 'minimize'):
    raise ConfigError(f'--direction must be maximize or minimize, got {direction!r}')
  optuna = import_optuna()
  params, fixed = load(spec)
  params = {k: p for k, p in params.items() if k not in common}  # a --config override fixes a searched key
  if not params:
    raise ConfigError(f'--config overrides fix every key that {spec} searches; nothing is left to search')
  common = {**fixed, **common}
  for point in corners(params):
    sweep_lib.resolve(spec, [point], common)
  config = config_lib.load(spec)
  for key, value in common.items():
    config_lib.set_value(config, key, value)
  if split == 'validation' and not config.data.get('validation_size'):
    raise ConfigError(f'--metric {metric} needs a validation split: set data.validation_size '
                      '(in search() or --config.data.validation_size=N)')
  lock = workdir_lock.WorkdirLock(workdir, what='search').acquire()
  try:
    study = open_study(optuna, workdir, metric, direction, seed)
    space, state, names = distributions(params, optuna), optuna.trial.TrialState, sweep_lib.short_keys(params)
    # A trial left RUNNING by a stopped search continues in its own workdir. Optuna has no public
    # way to reopen a trial; Trial(study, id) is what study.ask itself returns.
    stale = collections.deque((optuna.trial.Trial(study, t._trial_id), set(t.intermediate_values))
                              for t in study.trials if t.state == state.RUNNING)
    new = max(0, trials - len(study.trials))
    total, done, failed = len(stale) + new, 0, 0
    parallel = min(parallel, max(total, 1))
    print(f'search: {len(study.trials) - len(stale)} of {trials} trials finished, {len(stale)} to resume, {new} new; '
          f'{metric} ({direction}), {parallel} at a time, in {workdir}', flush=True)

    running: dict[int, _Running] = {}
    previous = signal.signal(signal.SIGTERM, sweep_lib.raise_stop)
    try:
      while stale or new or running:
        for slot in range(parallel):
          if slot not in running and (stale or new):
            if stale:
              trial, reported = stale.popleft()
            else:
              trial, reported, new = study.ask(space), set(), new - 1
            point_dir = os.path.join(workdir, trial_name(trial.number))
            num_steps = sweep_lib.resolve(spec, [trial.params], common)[0]['num_steps']
            proc = sweep_lib.launch_point(launcher, spec, common, trial.params, point_dir, slot, parallel, wait)
            running[slot] = _Running(proc, trial, num_steps, reported)
            write_manifest(workdir, spec, common, study)
        time.sleep(0.1)
        for slot, r in list(running.items()):
          point_dir = os.path.join(workdir, trial_name(r.trial.number))
          if r.pruned_at is None:
            r.offset, values = read_metric(os.path.join(point_dir, logging.METRICS_FILE), r.offset, split, name)
            r.pruned_at = feed(r.trial, values, r.reported, r.proc)
          if r.proc.poll() is None:
            continue
          del running[slot]
          done += 1
          failed += not _finish(study, r, point_dir, metric, f'[{done}/{total}]', names, state)
    except (sweep_lib.Stop, KeyboardInterrupt, sweep_lib.PointHeld) as e:
      # Each run saves a checkpoint on SIGTERM; the same command resumes the trials left RUNNING.
      for r in running.values():
        r.proc.send_signal(signal.SIGTERM)
      for r in running.values():
        r.proc.wait()
        if r.pruned_at is not None:
          study.tell(r.trial, state=state.PRUNED)
      if isinstance(e, sweep_lib.PointHeld):
        raise
      raise JaxlabError(f'search stopped with {len(running)} trial(s) running; run the same command to '
                        'continue') from None
    finally:
      signal.signal(signal.SIGTERM, previous)
    write_manifest(workdir, spec, common, study)
    _print_best(workdir, study, metric, state)
    return failed
  finally:
    lock.release()


def _finish(study: Any, r: _Running, point_dir: str, metric: str, counter: str, names: Mapping[str, str],
            state: Any) -> bool:
  """Tells the study how the trial's process ended and prints one line; False if it failed."""
  seconds, trial = time.perf_counter() - r.began, trial_name(r.trial.number)
  shown = ' '.join(f'{names[k]}={v:.4g}' if isinstance(v, float) else f'{names[k]}={v}' for k, v in r.trial.params.items())
  if r.proc.returncode == 0 and r.pruned_at is not None:
    study.tell(r.trial, state=state.PRUNED)
    print(f'{counter} pruned {trial} in {seconds:.1f}s at step {r.pruned_at} {shown}', flush=True)
    return True
  value = (read_summary(point_dir) or {}).get(metric)
  if r.proc.returncode == 0 and sweep_lib.is_finished(point_dir, r.num_steps) and isinstance(value, (int, float)):
    study.tell(r.trial, value)
    print(f'{counter} done   {trial} in {seconds:.1f}s {metric} {value:.4f} {shown}', flush=True)
    return True
  study.tell(r.trial, state=state.FAIL)
  why = f'no {metric} in its summary.json' if r.proc.returncode == 0 else f'exit {r.proc.returncode}'
  sweep_lib.report_failure(f'{counter} FAILED {trial} ({why})', point_dir, seconds)
  return False


def _print_best(workdir: str, study: Any, metric: str, state: Any) -> None:
  """Writes best.json and prints the best completed trial, if there is one."""
  if not any(t.state == state.COMPLETE for t in study.trials):
    print('search: no trial completed yet', flush=True)
    return
  best = write_best(workdir, study, metric)
  overrides = ' '.join(f'--config.{k}={sweep_lib.format_value(v)}' for k, v in best['params'].items())
  print(f'best: {trial_name(best["trial"])} {metric} {best["value"]:.4f}: {overrides} '
        f'(in {os.path.join(workdir, BEST_FILE)})', flush=True)


def define_command() -> Callable[[Any], None]:
  """`search`: Optuna's TPE over the config's search space, trials as sweep points, then one table."""
  parallel, wait = sweep_lib.define_run_flags()
  metric = flags.DEFINE_string('metric', 'validation_accuracy', 'The summary metric to tune.')
  trials = flags.DEFINE_integer('trials', 20, 'Trials the study should hold in the end.')
  direction = flags.DEFINE_enum('direction', None, ['maximize', 'minimize'],
                                'Default minimize for a *loss metric, else maximize.')
  seed = flags.DEFINE_integer('search_seed', 0, "The TPE sampler's seed.")

  def command(invocation: Any) -> None:
    workdir = invocation.workdir('search-')
    chosen = direction.value or ('minimize' if metric.value.endswith('loss') else 'maximize')
    failed = run(invocation.config_spec, workdir, trials=trials.value, common=invocation.overrides,
                 parallel=parallel.value, launcher=invocation.launcher, metric=metric.value, direction=chosen,
                 seed=seed.value, wait=wait.value)
    results.report(workdir, metric.value, failed, 'trial(s)')
  return command
