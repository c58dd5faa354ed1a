"""`launch.py explain`: attribution maps of a finished classification run, with Adebayo et al.'s sanity check.

For the first `num` examples of a split, each method's map of the target logit (the predicted
class or the label) is computed for the trained model and for the same architecture freshly
initialised (seed + 1). The Spearman rank correlation of the two maps' absolute values is the
model-randomisation test: a map that barely changes when the weights are random (high
correlation) shows the input, not what the model learned. Writes <workdir>/explain.json and one
PNG per method: input, trained map, overlay and re-initialised map per example (images), or the
input curve with both maps (1-D inputs such as MNIST-1D).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath

from jaxlab import config as config_lib
from jaxlab import tasks
from jaxlab.errors import ConfigError
from jaxlab.evaluators import attribution, robustness
from jaxlab.run import program as program_lib
from jaxlab.run import stop
from jaxlab.tasks import attacks

RESULTS_FILE = 'explain.json'
TARGETS = ('predicted', 'label')

MAX_PANELS = 16  # examples drawn in each figure; explain.json holds every one
EXAMPLES_PER_CALL = 64  # examples per compiled attribution call


def plot_file(method: str) -> str:
  return f'explain_{method}.png'


def _check_arguments(num: int, methods: Sequence[str], target: str, ig_steps: int, smoothgrad_samples: int) -> None:
  config_lib.require(num > 0, f'--num must be positive, got {num}')
  config_lib.require(bool(methods), f'--methods is empty; choose from {", ".join(attribution.METHODS)}')
  unknown = [m for m in methods if m not in attribution.METHODS]
  config_lib.require(not unknown, f'unknown attribution method(s) {", ".join(unknown)}; '
                                  f'choose from {", ".join(attribution.METHODS)}')
  config_lib.require(target in TARGETS, f'--target must be one of {", ".join(TARGETS)}, got {target!r}')
  config_lib.require(ig_steps > 0, f'--ig_steps must be positive, got {ig_steps}')
  config_lib.require(smoothgrad_samples > 0, f'--smoothgrad_samples must be positive, got {smoothgrad_samples}')


def _first_examples(source: Any, split: str, num: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `num` real (unpadded) examples of the split, fewer if the split is smaller."""
  xs, ys, have = [], [], 0
  for batch in source.eval_batches(split):
    real = np.asarray(batch['mask']) > 0
    xs.append(np.asarray(batch['x'])[real])
    ys.append(np.asarray(batch['y'])[real])
    have += int(real.sum())
    if have >= num:
      break
  return np.concatenate(xs)[:num], np.concatenate(ys)[:num]


def _attributor(task: Any, space: attacks.PixelSpace, method: str, ig_steps: int, smoothgrad_samples: int) -> Any:
  """jit(state, inputs, targets, key -> maps): one compilation serves the trained and the re-initialised state."""
  return jax.jit(lambda state, inputs, targets, key: attribution.attribute(
      method, task.logits_fn(state), space, inputs, targets, key, ig_steps, smoothgrad_samples))


def _completeness_errors(task: Any, state: Any, space: attacks.PixelSpace, inputs: np.ndarray, targets: np.ndarray,
                         maps: np.ndarray) -> np.ndarray:
  """|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)| per example."""
  pixels = space.to_pixels(jnp.asarray(inputs))
  logits_fn = task.logits_fn(state)
  gap = (attribution.target_logits(logits_fn, space, pixels, targets)
         - attribution.target_logits(logits_fn, space, jnp.zeros_like(pixels), targets))
  gap = np.asarray(gap)
  total = maps.reshape(len(maps), -1).sum(-1)
  return np.abs(total - gap) / np.maximum(np.abs(gap), 1e-12)


def explain(workdir: str, split: str = 'test', num: int = 16, methods: Sequence[str] = attribution.METHODS,
            target: str = 'predicted', ig_steps: int = 256, smoothgrad_samples: int = 50) -> dict[str, Any]:
  """Computes, saves and plots every method's maps; returns the report written to explain.json."""
  _check_arguments(num, methods, target, ig_steps, smoothgrad_samples)
  config = robustness.classification_run_config(workdir, 'explain')
  step, program, state = program_lib.restore_checkpoint(config, workdir)
  if split not in program.source.eval_splits:
    raise ConfigError(f'--split {split!r} is not a split of this run; it has {", ".join(program.source.eval_splits)}')
  if program.per_replica:
    state = jax.tree.map(lambda a: a[0], state)  # replica 0: the run's own seed
  task = tasks.make(config, program.source, program_lib.read_run)
  inputs, labels = _first_examples(program.source, split, num)
  random_state = jax.jit(task.init)(jax.random.PRNGKey(config.seed + 1), program.source.example_batch())
  predicted = np.asarray(jnp.argmax(task.logits_fn(state)(inputs), -1))
  targets = jnp.asarray(predicted if target == 'predicted' else labels)
  space = attacks.pixel_space(config.data)
  key = jax.random.PRNGKey(config.seed)
  report = {'step': step, 'split': split, 'target': target, 'labels': labels.tolist(), 'predicted': predicted.tolist(),
            'ig_steps': ig_steps, 'smoothgrad_samples': smoothgrad_samples, 'methods': {}}
  pixels = np.asarray(space.to_pixels(jnp.asarray(inputs)))
  figures = {}
  for method in methods:
    maps_of = _attributor(task, space, method, ig_steps, smoothgrad_samples)
    trained, randomised = (_maps_in_chunks(maps_of, s, inputs, targets, key) for s in (state, random_state))
    shown = attribution.per_position(method, trained), attribution.per_position(method, randomised)
    correlations = attribution.rank_correlations(*shown)
    entry = {'rank_correlation_with_reinitialised': float(np.nanmean(correlations)),
             'rank_correlations': correlations.tolist()}
    if method == 'integrated_gradients':
      errors = _completeness_errors(task, state, space, inputs, targets, trained)
      entry['completeness_error_max'] = float(errors.max())
      entry['completeness_errors'] = errors.tolist()
    report['methods'][method] = entry
    panels = slice(0, MAX_PANELS)  # a figure of every example would grow without bound (100 px each)
    figures[method] = (pixels[panels], shown[0][panels], shown[1][panels], labels[panels], predicted[panels])
  with stop.deferred():  # every file whole, or none
    for method, panels in figures.items():
      _plot(method, *panels, str(epath.Path(workdir) / plot_file(method)))
    (epath.Path(workdir) / RESULTS_FILE).write_text(json.dumps(report, indent=1))
  return report


def _maps_in_chunks(maps_of: Any, state: Any, inputs: np.ndarray, targets: jax.Array, key: jax.Array) -> np.ndarray:
  """maps_of over EXAMPLES_PER_CALL examples at a time: memory stays flat, time grows linearly with the number
  of examples, and a signal stops the command between chunks. Chunk c > 0 draws its noise from fold_in(key, c);
  a last, partial chunk is padded to the same shape, so one program serves every chunk."""
  size = min(len(inputs), EXAMPLES_PER_CALL)
  maps = []
  for c, begin in enumerate(range(0, len(inputs), size)):
    part_inputs, part_targets = inputs[begin:begin + size], targets[begin:begin + size]
    real = len(part_inputs)
    if real < size:
      part_inputs = np.concatenate([part_inputs, np.zeros((size - real, *inputs.shape[1:]), inputs.dtype)])
      part_targets = jnp.concatenate([part_targets, jnp.zeros((size - real,), part_targets.dtype)])
    chunk_key = key if c == 0 else jax.random.fold_in(key, c)
    maps.append(np.asarray(maps_of(state, part_inputs, part_targets, chunk_key))[:real])
    stop.check()
  return np.concatenate(maps)


def _plot(method: str, pixels: np.ndarray, trained: np.ndarray, randomised: np.ndarray, labels: np.ndarray,
          predicted: np.ndarray, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig = (_image_panels if pixels.ndim == 4 else _curve_panels)(plt, method, pixels, trained, randomised, labels,
                                                                 predicted)
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=80)
  plt.close(fig)
  epath.Path(path).write_bytes(buffer.getvalue())


def _map_style(method: str, values: np.ndarray) -> dict[str, Any]:
  """Saliency is unsigned (0 .. max); the other maps are signed, drawn blue-white-red around 0."""
  bound = float(np.abs(values).max()) or 1.0
  return dict(cmap='magma', vmin=0, vmax=bound) if method == 'saliency' else dict(cmap='bwr', vmin=-bound, vmax=bound)


def _image_panels(plt: Any, method: str, pixels: np.ndarray, trained: np.ndarray, randomised: np.ndarray,
                  labels: np.ndarray, predicted: np.ndarray) -> Any:
  n = len(pixels)
  fig, axes = plt.subplots(4, n, figsize=(1.3 * n, 5.6), squeeze=False)
  shown = np.clip(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, 0, 1)
  gray = dict(cmap='gray', vmin=0, vmax=1) if pixels.shape[-1] == 1 else {}
  for i in range(n):
    axes[0, i].imshow(shown[i], **gray)
    axes[0, i].set_title(f'y={labels[i]} p={predicted[i]}', fontsize=7)
    axes[1, i].imshow(trained[i], **_map_style(method, trained[i]))
    axes[2, i].imshow(shown[i], **gray)
    axes[2, i].imshow(np.abs(trained[i]), cmap='inferno', alpha=0.6)
    axes[3, i].imshow(randomised[i], **_map_style(method, randomised[i]))
  for row, name in enumerate(('input', 'trained', 'overlay', 're-initialised')):
    axes[row, 0].set_ylabel(name, fontsize=8)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(method.replace('_', ' '))
  fig.tight_layout()
  return fig


def _curve_panels(plt: Any, method: str, pixels: np.ndarray, trained: np.ndarray, randomised: np.ndarray,
                  labels: np.ndarray, predicted: np.ndarray) -> Any:
  n, columns = len(pixels), 4
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
  curves = pixels.reshape(n, pixels.shape[1], -1)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.axis('off')
      continue
    ax.plot(curves[i], color='0.6', linewidth=1)
    ax.set_title(f'y={labels[i]} predicted={predicted[i]}', fontsize=8)
    maps = ax.twinx()
    positions = np.arange(trained.shape[1])
    maps.bar(positions, trained[i], color='tab:red', alpha=0.6, label='trained')
    maps.plot(positions, randomised[i] * _scale(trained[i], randomised[i]), color='tab:blue', linewidth=1,
              label='re-initialised (rescaled)')
    if i == 0:
      maps.legend(fontsize=6, loc='upper right')
  fig.suptitle(f'{method.replace("_", " ")}: input (grey), maps (bars: trained, line: re-initialised)')
  fig.tight_layout()
  return fig


def _scale(reference: np.ndarray, other: np.ndarray) -> float:
  """A factor that draws `other` at the height of `reference` (the two models' maps differ in magnitude)."""
  top = float(np.abs(other).max())
  return float(np.abs(reference).max()) / top if top else 1.0


def format_table(report: dict[str, Any]) -> str:
  rows = ['| method | rank correlation, trained vs re-initialised (mean) | IG completeness error (max) |',
          '|---|---|---|']
  for method, entry in report['methods'].items():
    completeness = entry.get('completeness_error_max')
    rows.append(f'| {method} | {entry["rank_correlation_with_reinitialised"]:.3f} | '
                f'{"-" if completeness is None else f"{100 * completeness:.2f} %"} |')
  return '\n'.join(rows)


def define_command() -> Callable[[Any], None]:
  """`explain`: attribution maps of a classification run and their sanity check (explain.json, explain_*.png)."""
  split = flags.DEFINE_string('split', 'test', 'The split whose first examples are explained.')
  num = flags.DEFINE_integer('num', 16, 'How many examples.')
  methods = flags.DEFINE_list('methods', ['saliency', 'grad_x_input', 'integrated_gradients', 'smoothgrad'],
                              'Attribution methods.')
  target = flags.DEFINE_string('target', 'predicted', 'The logit explained, the predicted class or the label.')
  ig_steps = flags.DEFINE_integer('ig_steps', 256, 'Integrated-gradients quadrature steps.')
  smoothgrad_samples = flags.DEFINE_integer('smoothgrad_samples', 50, 'SmoothGrad noisy samples.')

  def command(invocation: Any) -> None:
    workdir = invocation.run_to_read('explain', 'the classification run to explain')
    report = explain(workdir, split.value, num.value, methods.value, target.value, ig_steps.value,
                     smoothgrad_samples.value)
    print(f'Attribution maps of {len(report["labels"])} {report["split"]} examples, checkpoint of step '
          f'{report["step"]}, target: the {report["target"]} class')
    print(format_table(report))
    shown = '' if len(report['labels']) <= MAX_PANELS else f' (figures: the first {MAX_PANELS} examples)'
    print(f'Saved {os.path.join(workdir, RESULTS_FILE)} and '
          f'{", ".join(plot_file(m) for m in report["methods"])}{shown}', flush=True)
  return command
