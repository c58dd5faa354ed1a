"""A sweep's final numbers: results.csv, results.md (mean ± std over seeds) and a plot."""

from __future__ import annotations

import csv
import json
import os
import statistics
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import flags

from jaxlab.errors import ConfigError, JaxlabError

CSV_FILE, MARKDOWN_FILE = 'results.csv', 'results.md'
EVAL_PREFIXES = ('test_', 'validation_')
# train.SUMMARY_FILE, written at the end of a run; not imported from there, as train imports JAX
# and sweep/search parents never start it.
SUMMARY_FILE = 'summary.json'
MANIFEST = 'sweep.json'  # a sweep's (or search's) list of points and their workdirs
STUDY_FILE = 'study.db'  # a search's Optuna study, beside the manifest


def default_metric(names: Iterable[str]) -> str | None:
  """The metric shown when none is asked for: test_accuracy where the runs report it, else their first test
  metric (an RL run's test_return); None where they report none."""
  tests = sorted(n for n in names if n.startswith('test_'))
  return 'test_accuracy' if 'test_accuracy' in tests else (tests[0] if tests else None)


def is_seed_key(key: str) -> bool:
  return key.split('.')[-1] == 'seed'


def completed(summary: Mapping[str, Any], num_steps: int) -> bool:
  """True for a final summary at step `num_steps`, or of a run that stopped early; not a preempted one."""
  return (summary.get('step') == num_steps or bool(summary.get('stopped_early'))) and not summary.get('preempted')


def read_summary(point_dir: str) -> dict[str, Any] | None:
  """The summary.json a run in `point_dir` wrote, or None if there is none (or it is unreadable)."""
  try:
    with open(os.path.join(point_dir, SUMMARY_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def collect(workdir: str) -> tuple[list[dict[str, Any]], list[str]]:
  """One row per point of the sweep in `workdir` (its overrides, status, summary) and the swept keys."""
  try:
    with open(os.path.join(workdir, MANIFEST)) as f:
      manifest = json.load(f)
  except OSError:
    raise ConfigError(f'no {MANIFEST} in {workdir}: not a sweep workdir') from None
  keys = list(dict.fromkeys(k for p in manifest['points'] for k in p['overrides']))
  rows = []
  for point in manifest['points']:
    row = {'name': point['name'], **point['overrides']}
    summary = read_summary(os.path.join(workdir, point['name']))
    if summary is None:
      row['status'] = 'missing'
    else:
      finished = completed(summary, summary.get('num_steps'))
      row['status'] = 'done' if finished else 'partial'
      row.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    rows.append(row)
  return rows, keys


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The evaluation metrics the finished runs report, test ones first."""
  names = {k for r in rows if r['status'] == 'done' for k in r if k.startswith(EVAL_PREFIXES)}
  return sorted(names, key=lambda k: (not k.startswith('test_'), k))


def aggregate(rows: Sequence[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
  """Finished points grouped by their non-seed values: {'values', 'n', metric: (mean, std)}.

  std is the sample standard deviation over the group's seeds (0 for a single seed).
  """
  group_keys = [k for k in keys if not is_seed_key(k)]
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for row in rows:
    if row['status'] == 'done':
      groups.setdefault(tuple(_hashable(row.get(k)) for k in group_keys), []).append(row)
  result = []
  for members in groups.values():
    entry = {'values': {k: members[0].get(k) for k in group_keys}, 'n': len(members)}
    for m in metrics:
      xs = [r[m] for r in members if m in r]
      entry[m] = (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else None
    result.append(entry)
  return result


def _hashable(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def markdown(groups: Sequence[dict[str, Any]], metrics: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table, one line per group of otherwise equal points."""
  keys = list(groups[0]['values']) if groups else []
  head = [*keys, 'seeds', *metrics]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for g in groups:
    # 4 significant digits keep sampled values (a search's learning rates) readable; the csv has them all.
    cells = [f'{v:.4g}' if isinstance(v, float) else str(v) for v in g['values'].values()] + [str(g['n'])]
    cells += ['' if g[m] is None else f'{g[m][0]:.4f} ± {g[m][1]:.4f}' for m in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  done = sum(r['status'] == 'done' for r in rows)
  lines.append(f'\n{done} of {len(rows)} points finished; mean ± sample std over seeds.')
  return '\n'.join(lines) + '\n'


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> None:
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)


def _log_scale(values: Sequence[Any]) -> bool:
  """Log x for positive numbers spanning a factor of 10 or more (learning rates, decays)."""
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  return numeric and min(values) > 0 and max(values) / min(values) >= 10


def plot(groups: Sequence[dict[str, Any]], metric: str, path: str) -> bool:
  """`metric` (mean, error bars = std over seeds) against each swept non-seed key; False if none."""
  keys = list(groups[0]['values']) if groups else []
  if not keys or not any(g[metric] for g in groups):
    return False
  import matplotlib
  matplotlib.use('Agg')  # files only: no display on servers and TPU VMs
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    others = [k for k in keys if k != key]
    lines: dict[tuple, list[dict[str, Any]]] = {}
    for g in groups:
      if g[metric]:
        lines.setdefault(tuple(_hashable(g['values'][k]) for k in others), []).append(g)
    xs_all = list(dict.fromkeys(_hashable(g['values'][key]) for g in groups))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    for label, members in lines.items():
      members = sorted(members, key=lambda g: xs_all.index(_hashable(g['values'][key])))
      xs = [g['values'][key] if numeric else xs_all.index(_hashable(g['values'][key])) for g in members]
      ax.errorbar(xs, [g[metric][0] for g in members], yerr=[g[metric][1] for g in members], marker='o',
                  capsize=3, label=', '.join(f'{k}={v}' for k, v in zip(others, label)) or None)
    if numeric and _log_scale(xs_all):
      ax.set_xscale('log')
    ax.set_xticks(xs_all if numeric else range(len(xs_all)), [str(v) for v in xs_all])
    ax.minorticks_off()  # a log axis otherwise labels minor ticks between the swept values
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    if others:
      ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write(workdir: str, metric: str | None = None, with_plot: bool = True) -> str:
  """Writes results.csv (every number), results.md and (`with_plot`) <metric>.png into the sweep's
  workdir; returns the table. `metric` None: default_metric of what the runs report."""
  rows, keys = collect(workdir)
  metrics = metric_names(rows)
  metric = metric or default_metric(metrics) or 'test_accuracy'
  if metric not in metrics and any(r['status'] == 'done' for r in rows):
    raise ConfigError(f'metric {metric!r} is not in the runs\' summaries; they have: {", ".join(metrics)}')
  groups = aggregate(rows, keys, metrics)
  write_csv(rows, os.path.join(workdir, CSV_FILE))
  # The table stays readable: the chosen metric, accuracies and losses (results.csv has them all).
  shown = [metric] + [m for m in metrics if m != metric and m.endswith(('accuracy', 'loss'))]
  table = markdown(groups, shown if metric in metrics else metrics, rows)
  with open(os.path.join(workdir, MARKDOWN_FILE), 'w') as f:
    f.write(table)
  plotted = with_plot and plot(groups, metric, os.path.join(workdir, f'{metric}.png'))
  written = [CSV_FILE, MARKDOWN_FILE] + ([f'{metric}.png'] if plotted else [])
  return table + f'Wrote {", ".join(os.path.join(workdir, w) for w in written)}\n'


def define_metric_flag(what: str) -> flags.FlagHolder:
  return flags.DEFINE_string('metric', None, f'{what} (default test_accuracy, else the runs\' first test metric).')


def report(workdir: str, metric: str | None, failed: int = 0, runs: str = 'sweep point(s)') -> None:
  """Prints the table (and writes the plot) of a sweep or search workdir; a one-line error if runs failed."""
  # A search's sampled values are all different: a line plot per value would show nothing.
  is_search = os.path.exists(os.path.join(workdir, STUDY_FILE))
  print(write(workdir, metric, with_plot=not is_search), end='', flush=True)
  if failed:
    raise JaxlabError(f'{failed} {runs} failed (their logs are above); the others are in the table')


def define_command() -> Callable[[Any], None]:
  """`results SWEEP_WORKDIR`: the table and plot of a sweep or search."""
  metric = define_metric_flag('The summary metric to show and plot')

  def command(invocation: Any) -> None:
    report(invocation.args[0], metric.value)
  return command
