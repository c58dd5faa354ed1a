"""`launch.py attack`: a finished classification run's accuracy under FGSM and PGD versus epsilon.

The run's newest checkpoint is evaluated with the given `eval` attack settings on every split;
the table is printed and saved as <workdir>/attack.json and the curves as <workdir>/attack.png.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Sequence

import ml_collections
from absl import flags
from etils import epath

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.run import evaluation, stop
from jaxlab.tasks import attacks

RESULTS_FILE = 'attack.json'
PLOT_FILE = 'attack.png'


def classification_run_config(workdir: str, command: str) -> ml_collections.ConfigDict:
  """The saved config of the classification run in `workdir`, which `command` (attack, explain) needs."""
  config = config_lib.read_run(workdir)
  if config.task != 'classification':
    raise ConfigError(f'{workdir} holds a {config.task!r} run; {command} needs a classification run')
  return config


def parse_eps(values: Sequence[str]) -> tuple[float, ...]:
  try:
    eps = tuple(float(v) for v in values)
  except ValueError:
    raise ConfigError(f'--eps must be numbers, got {",".join(values)!r}') from None
  if not eps:
    raise ConfigError('--eps is empty; give e.g. --eps=0.1,0.2,0.3')
  return eps


def attack(workdir: str, eps: Sequence[float], methods: Sequence[str], pgd_steps: int, pgd_restarts: int,
           pgd_step_size: float = 0.0, num_examples: int = 0) -> dict[str, Any]:
  """Evaluates the run under every method at every epsilon on the first `num_examples` of each
  split (whole evaluation batches; 0: all); writes attack.json and attack.png."""
  config_lib.require(num_examples >= 0, f'--num_examples must be >= 0 (0: all), got {num_examples}')
  config = classification_run_config(workdir, 'attack')
  with config.unlocked():
    config.eval.update(dict(attack_eps=tuple(eps), attacks=tuple(methods), pgd_steps=pgd_steps,
                            pgd_restarts=pgd_restarts, pgd_step_size=pgd_step_size))
  chosen = attacks.from_config(config)  # bad settings: one line before any data is read
  step, results = evaluation.evaluate_checkpoint(config, workdir, num_examples)
  report = {'step': step, 'examples': {split: m['examples'] for split, m in results.items()}, 'eps': list(eps),
            'methods': list(methods), 'pgd_steps': pgd_steps,
            'pgd_restarts': pgd_restarts, 'pgd_step_size': pgd_step_size or None,
            'splits': {split: {'clean': m['accuracy'],
                               **{method: [m[f'{a.name}_accuracy'] for a in chosen if a.method == method]
                                  for method in methods}}
                       for split, m in results.items()}}
  with stop.deferred():  # both files whole, or neither
    (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(report, indent=1))
    _plot(report, str(epath.Path(workdir) / PLOT_FILE))
  return report


def _plot(report: dict[str, Any], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  eps = [0.0, *report['eps']]
  for split, curves in report['splits'].items():
    for method in report['methods']:
      ax.plot(eps, [curves['clean'], *curves[method]], marker='o', label=f'{split} {method.upper()}')
  ax.set_xlabel('epsilon (L-infinity)')
  ax.set_ylabel('accuracy')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(f'robust accuracy, step {report["step"]}')
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  epath.Path(path).write_bytes(buffer.getvalue())


def format_table(report: dict[str, Any]) -> str:
  """A markdown table: one row per split and method, one column per epsilon."""
  head = '| split | attack | clean | ' + ' | '.join(f'eps {e:g}' for e in report['eps']) + ' |'
  rows = [head, '|' + '---|' * (3 + len(report['eps']))]
  for split, curves in report['splits'].items():
    for method in report['methods']:
      cells = ' | '.join(f'{100 * a:.2f} %' for a in curves[method])
      rows.append(f'| {split} | {method} | {100 * curves["clean"]:.2f} % | {cells} |')
  return '\n'.join(rows)


def define_command() -> Callable[[Any], None]:
  """`attack`: a classification run's accuracy under FGSM and PGD against epsilon (attack.json, attack.png)."""
  eps = flags.DEFINE_list('eps', ['0.1', '0.2', '0.3'], 'L-infinity radii (pixel units for images).')
  methods = flags.DEFINE_list('attacks', ['fgsm', 'pgd'], 'Methods (fgsm, pgd).')
  pgd_steps = flags.DEFINE_integer('pgd_steps', 100, 'PGD steps.')
  pgd_restarts = flags.DEFINE_integer('pgd_restarts', 1, 'PGD random restarts.')
  num_examples = flags.DEFINE_integer('num_examples', 0, 'The first N examples of each split, in whole evaluation '
                                                         'batches (0: all).')

  def command(invocation: Any) -> None:
    workdir = invocation.run_to_read('attack', 'the classification run to attack')
    report = attack(workdir, parse_eps(eps.value), methods.value, pgd_steps.value, pgd_restarts.value,
                    num_examples=num_examples.value)
    n = num_examples.value
    print(f'Accuracy under attack, checkpoint of step {report["step"]}, '
          f'{"all" if not n else f"the first {n}"} examples per split '
          f'(PGD: {pgd_steps.value} steps, {pgd_restarts.value} restart(s)):')
    print(format_table(report))
    print(f'Saved {os.path.join(workdir, RESULTS_FILE)} and {PLOT_FILE}', flush=True)
  return command
