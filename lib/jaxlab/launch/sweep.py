"""Hyper-parameter sweeps: declared as plain data in a config file, run as one process per point.

A config file may define, next to `get_config`,

    def sweep(arg=None):
      return product(('optimizer.learning_rate', [1e-3, 1e-2]), ('seed', [0, 1, 2]))

`product` and `zip` (big_vision's style) turn `(key, values)` axes, or lists of points made by
another helper, into a list of points: dicts of dotted config key -> value.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import flags

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.launch import results
from jaxlab.launch.results import MANIFEST, completed, default_metric, read_summary
from jaxlab.run import workdir_lock

Point = dict[str, Any]
Axis = tuple[str, Sequence[Any]] | Sequence[Point]


LOG_FILE = 'launch.log'
_SAFE = re.compile(r'[^A-Za-z0-9._=,+-]')
_MAX_NAME = 120
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _points(axis: Axis) -> list[Point]:
  """An axis as points: ('k', [1, 2]) -> [{'k': 1}, {'k': 2}]; a list of points as it is."""
  if isinstance(axis, tuple) and len(axis) == 2 and isinstance(axis[0], str):
    key, values = axis
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
      raise ConfigError(f'sweep axis {key!r}: values must be a list, got {values!r}')
    return [{key: v} for v in values]
  points = list(axis)
  if not all(isinstance(p, dict) for p in points):
    raise ConfigError(f'a sweep axis is (key, values) or a list of dicts, got {axis!r}')
  return points


def product(*axes: Axis) -> list[Point]:
  """Every combination of the axes' points; the last axis varies fastest."""
  result: list[Point] = [{}]
  for axis in axes:
    result = [{**a, **b} for a in result for b in _points(axis)]
  return result


def zip(*axes: Axis) -> list[Point]:  # noqa: A001 - big_vision's name for it
  """The axes' points paired up in order; all axes must have the same length."""
  lists = [_points(axis) for axis in axes]
  lengths = {len(p) for p in lists}
  if len(lengths) > 1:
    raise ConfigError(f'sweep zip() of axes of different lengths {sorted(lengths)}')
  return [{k: v for p in group for k, v in p.items()} for group in builtins.zip(*lists)]


def mnist1d_sweep(arg: str | None = None) -> list[Point]:
  """The MNIST-1D configs' sweep: learning rate around the paper's 1e-2, three seeds each.

  Those configs bind it as their own `sweep` (`from jaxlab.launch.sweep import mnist1d_sweep as sweep`),
  so `launch.py sweep --config configs/mnist1d/<model>.py` runs it.
  """
  del arg
  return product(('optimizer.learning_rate', [3e-3, 1e-2, 3e-2]), ('seed', [0, 1, 2]))


def load(spec: str) -> list[Point]:
  """The points of `sweep(arg)` in the config file `path.py[:arg]`."""
  points = config_lib.call(spec, 'sweep')
  if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
    raise ConfigError(f'{spec}: sweep() must return a non-empty list of dicts, got {points!r:.200}')
  return points


def format_value(value: Any) -> str:
  """A value as a `--config.key=` override reads it back (str/int/float/bool/tuple)."""
  return str(value)


def short_keys(keys: Iterable[str]) -> dict[str, str]:
  """Each dotted key -> its last part, or the whole key where two last parts would collide."""
  keys = list(dict.fromkeys(keys))
  counts = collections.Counter(k.split('.')[-1] for k in keys)
  return {k: k.split('.')[-1] if counts[k.split('.')[-1]] == 1 else k for k in keys}


def point_name(point: Point, names: Mapping[str, str]) -> str:
  """A directory name from the overrides, e.g. 'learning_rate=0.001,seed=0'.

  Characters other than letters, digits and `._=,+-` become `_`; then (and for long names)
  a hash of the exact overrides keeps names of different points apart.
  """
  raw = ','.join(f'{names[k]}={format_value(v)}' for k, v in point.items())
  safe = _SAFE.sub('_', raw)
  if safe != raw or len(safe) > _MAX_NAME:
    digest = hashlib.sha1(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:8]
    safe = f'{safe[:_MAX_NAME]}-{digest}'
  return safe


def resolve(spec: str, points: Sequence[Point], common: Mapping[str, Any] = {}) -> list[dict[str, Any]]:
  """Checks every point against the config and names it: [{'name', 'overrides', 'num_steps'}].

  An unknown key or a value of the wrong type is an error naming the point and the key.
  """
  names = short_keys(k for p in points for k in p)
  resolved, seen = [], {}
  for point in points:
    name = point_name(point, names)
    same = seen.get(json.dumps(point, sort_keys=True, default=str)) or seen.get(name)
    if same:
      raise ConfigError(f'sweep has the point {point} twice (also as {same})')
    seen[json.dumps(point, sort_keys=True, default=str)] = seen[name] = point
    config = config_lib.load(spec)
    try:
      for key, value in {**common, **point}.items():
        config_lib.set_value(config, key, value)
    except ConfigError as e:
      raise ConfigError(f'sweep point {name}: {e}') from None
    resolved.append({'name': name, 'overrides': dict(point), 'num_steps': config.train.num_steps, 'config': config})
  return resolved


def check_unchanged(workdir: str, points: Sequence[dict[str, Any]]) -> None:
  """A sweep rerun in its workdir must ask for what its points ran: else one error, before anything runs.

  Points added since are fine, and so are more steps where a run may be continued to them
  (config.check_same); a point whose saved config differs otherwise (fewer steps, a changed config
  file) would fail, and the table would show its old results as new.
  """
  for point in points:
    saved = config_lib.read_saved(os.path.join(workdir, point['name']))
    if saved is not None:
      config_lib.check_same(saved, point['config'], f'sweep point {point["name"]} in {workdir} ran with another config',
                            hint='Use another --workdir for the changed sweep.')


def is_finished(point_dir: str, num_steps: int) -> bool:
  """True when the point's run wrote its final summary (see `completed`)."""
  summary = read_summary(point_dir)
  return summary is not None and completed(summary, num_steps)


def cores_for(slot: int, parallel: int, cores: Sequence[int]) -> list[int]:
  """The CPU cores of slot `slot` of `parallel`: an even split, shared when slots outnumber cores."""
  if parallel >= len(cores):
    return [cores[slot % len(cores)]]
  base, extra = divmod(len(cores), parallel)
  start = slot * base + min(slot, extra)
  return list(cores[start:start + base + (slot < extra)])


def child_argv(launcher: Sequence[str], spec: str, common: Mapping[str, Any], point: Point,
               workdir: str) -> list[str]:
  """The launch.py command of one point: the sweep's common overrides, then the point's."""
  overrides = [f'--config.{k}={format_value(v)}' for k, v in {**common, **point}.items()]
  return [*launcher, f'--config={spec}', *overrides, f'--workdir={workdir}']


def _child_setup(cores: Sequence[int] | None, parent: int) -> Callable[[], None]:
  """What the child runs between fork and exec: die with the parent (Linux), then pin to `cores`."""
  def setup() -> None:
    if sys.platform.startswith('linux'):
      import ctypes
      ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
      if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    if cores and hasattr(os, 'sched_setaffinity'):
      os.sched_setaffinity(0, cores)
  return setup


def start(argv: Sequence[str], log_path: str, cores: Sequence[int] | None) -> subprocess.Popen:
  """Starts `argv` with stdout+stderr appended to `log_path`, pinned to `cores` (Linux).

  The affinity is set before exec, so every thread XLA starts inherits it, and XLA sizes its
  CPU thread pool from the cores it may use. A new session keeps a terminal's Ctrl-C away from
  the children: the sweep forwards it as SIGTERM, on which a run saves a checkpoint and stops.
  If the sweep itself dies (even by SIGKILL), the kernel sends its runs SIGTERM (Linux), so no
  point keeps training unattended beside a restarted sweep.
  """
  log = open(log_path, 'a')
  log.write(f'$ {" ".join(argv)}\n')
  log.flush()
  try:
    return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_child_setup(cores, os.getpid()))
  finally:
    log.close()


DEFAULT_WAIT_S = 300  # for a point another process holds: long enough for a killed sweep's run to save and exit


class PointHeld(JaxlabError):
  """A point's workdir stayed held by another live process for longer than the sweep waits."""


def wait_until_free(point_dir: str, name: str, wait: float = DEFAULT_WAIT_S, poll: float = 0.2) -> None:
  """Waits while another process holds the point's workdir (e.g. a run of a killed sweep still saving), at
  most `wait` seconds; then PointHeld."""
  holder = workdir_lock.holder(point_dir)
  if holder is None:
    return
  print(f'sweep: point {name} is still held by {workdir_lock.describe(holder)}; waiting up to {wait:g}s for it to '
        'stop', flush=True)
  deadline = time.monotonic() + wait
  while (holder := workdir_lock.holder(point_dir)) is not None:
    if time.monotonic() >= deadline:
      raise PointHeld(f'point {name} is still held by {workdir_lock.describe(holder)} after {wait:g}s; stop that '
                      'process (or wait longer with --wait) and run the same command to continue')
    time.sleep(poll)


def launch_point(launcher: Sequence[str], spec: str, common: Mapping[str, Any], point: Point, point_dir: str,
                 slot: int = 0, parallel: int = 1, wait: float = DEFAULT_WAIT_S) -> subprocess.Popen:
  """Starts one point's run in `point_dir`, on slot `slot`'s share of the CPU cores when `parallel` > 1, once no
  other process holds it (waiting `wait` seconds at most)."""
  os.makedirs(point_dir, exist_ok=True)
  wait_until_free(point_dir, os.path.basename(point_dir), wait)
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
  slot_cores = cores_for(slot, parallel, cores) if parallel > 1 and cores else None
  return start(child_argv(launcher, spec, common, point, point_dir), os.path.join(point_dir, LOG_FILE), slot_cores)


def report_failure(headline: str, point_dir: str, seconds: float) -> None:
  """Prints `headline`, the time, and the end of the point's log to stderr."""
  log = os.path.join(point_dir, LOG_FILE)
  print(f'{headline} after {seconds:.1f}s; end of {log}:\n' + ''.join(f'    {line}' for line in tail(log).splitlines(True)),
        file=sys.stderr, flush=True)


def tail(path: str, lines: int = 20) -> str:
  try:
    with open(path, errors='replace') as f:
      return ''.join(collections.deque(f, maxlen=lines))
  except OSError:
    return ''


class Stop(Exception):
  """SIGTERM or Ctrl-C reached the sweep (or search)."""


def raise_stop(signum, frame):
  raise Stop()


def run(spec: str, workdir: str, *, common: Mapping[str, Any] = {}, parallel: int = 1,
        launcher: Sequence[str] = (sys.executable, 'launch.py'), metric: str | None = None,
        wait: float = DEFAULT_WAIT_S) -> int:
  """Runs every point of the sweep in `spec` under `workdir`; returns the number that failed.

  Finished points are skipped, interrupted ones resume from their checkpoints (train.train
  does that), a failing one is reported with the tail of its log and the others go on.
  """
  check_run_flags(parallel, wait)
  points = resolve(spec, load(spec), common)
  with workdir_lock.WorkdirLock(workdir, what='sweep'):
    check_unchanged(workdir, points)
    return _run_points(spec, workdir, points, common, parallel, launcher, metric, wait)


def check_run_flags(parallel: int, wait: float) -> None:
  if parallel < 1:
    raise ConfigError(f'--parallel must be >= 1, got {parallel}')
  if not 0 <= wait < float('inf'):
    raise ConfigError(f'--wait must be a number of seconds >= 0, got {wait}')


def _run_points(spec: str, workdir: str, points: list[dict[str, Any]], common: Mapping[str, Any], parallel: int,
                launcher: Sequence[str], metric: str | None, wait: float) -> int:
  with open(os.path.join(workdir, MANIFEST), 'w') as f:
    json.dump({'config': spec, 'common': {k: format_value(v) for k, v in common.items()},
               'points': [{'name': p['name'], 'overrides': p['overrides']} for p in points]}, f, indent=2)
  todo = collections.deque(p for p in points if not is_finished(os.path.join(workdir, p['name']), p['num_steps']))
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []
  parallel = min(parallel, max(len(todo), 1))
  share = '' if parallel == 1 or not cores else f', {len(cores_for(0, parallel, cores))} core(s) each'
  print(f'sweep: {len(points)} points, {len(points) - len(todo)} already finished, {len(todo)} to run '
        f'({parallel} at a time{share}) in {workdir}', flush=True)

  running: dict[int, tuple[subprocess.Popen, dict[str, Any], float]] = {}
  failed: list[str] = []
  total, done = len(todo), 0
  previous = signal.signal(signal.SIGTERM, raise_stop)
  try:
    while todo or running:
      for slot in range(parallel):
        if slot not in running and todo:
          point = todo.popleft()
          proc = launch_point(launcher, spec, common, point['overrides'], os.path.join(workdir, point['name']),
                              slot, parallel, wait)
          running[slot] = (proc, point, time.perf_counter())
      time.sleep(0.1)
      for slot, (proc, point, began) in list(running.items()):
        if proc.poll() is None:
          continue
        del running[slot]
        done += 1
        point_dir = os.path.join(workdir, point['name'])
        seconds = time.perf_counter() - began
        if proc.returncode == 0 and is_finished(point_dir, point['num_steps']):
          summary = read_summary(point_dir)
          name = metric or default_metric(summary)
          shown = f'{name} {summary[name]:.4f}' if isinstance(summary.get(name), float) else ''
          print(f'[{done}/{total}] done   {point["name"]} in {seconds:.1f}s {shown}', flush=True)
        else:
          failed.append(point['name'])
          report_failure(f'[{done}/{total}] FAILED {point["name"]} (exit {proc.returncode})', point_dir, seconds)
  except (Stop, KeyboardInterrupt, PointHeld) as e:
    # Each run saves a checkpoint on SIGTERM, so the same sweep command continues from there.
    for proc, _, _ in running.values():
      proc.send_signal(signal.SIGTERM)
    for proc, _, _ in running.values():
      proc.wait()
    if isinstance(e, PointHeld):
      raise
    raise JaxlabError(f'sweep stopped with {len(running) + len(todo)} point(s) unfinished; '
                      'run the same command to continue') from None
  finally:
    signal.signal(signal.SIGTERM, previous)
  return len(failed)


def define_run_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """--parallel and --wait, which sweep and search share."""
  return (flags.DEFINE_integer('parallel', 1, 'Runs at a time, each on its share of the CPU cores.'),
          flags.DEFINE_float('wait', DEFAULT_WAIT_S, 'Seconds to wait for a point that another process holds '
                             "(a killed sweep's run still saving) before stopping with an error."))


def define_command() -> Callable[[Any], None]:
  """`sweep`: every point of the config's sweep, then one table."""
  parallel, wait = define_run_flags()
  metric = results.define_metric_flag('The summary metric to show and plot')

  def command(invocation: Any) -> None:
    workdir = invocation.workdir('sweep-')
    failed = run(invocation.config_spec, workdir, common=invocation.overrides, parallel=parallel.value,
                 launcher=invocation.launcher, metric=metric.value, wait=wait.value)
    results.report(workdir, metric.value, failed, 'sweep point(s)')
  return command
