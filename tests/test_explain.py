"""Attribution maps: the four methods against hand formulas on a linear model, integrated gradients'
completeness on a trained network, the rank-correlation sanity check, and `launch.py explain`."""

import json

import jax
import numpy as np
import pytest
from conftest import launch, tiny_config

from jaxlab.evaluators import attribution, explain
from jaxlab.run import train
from jaxlab.tasks import attacks

SPACE = attacks.PixelSpace(mean=(0.5, 0.4), std=(0.25, 0.5), low=0.0, high=1.0)


def _linear_model(features=3 * 3 * 2, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  w, b = rng.normal(size=(features, classes)).astype(np.float32), rng.normal(size=classes).astype(np.float32)
  return w, lambda x: x.reshape(len(x), -1) @ w + b


@pytest.mark.parametrize('method', attribution.METHODS)
def test_maps_of_a_linear_model_match_the_hand_formulas(method):
  """logits = W . (p - mean) / std + b: d logit_t / dp = W[:, t] / std, the same at every p, so
  smoothgrad is that gradient, and integrated gradients from the black image equals grad x input."""
  w, logits_fn = _linear_model()
  rng = np.random.default_rng(1)
  pixels = rng.uniform(0, 1, (5, 3, 3, 2)).astype(np.float32)
  targets = rng.integers(0, 4, 5)
  gradient = (w[:, targets].T.reshape(5, 3, 3, 2) / np.array(SPACE.std, np.float32))
  expected = {'saliency': np.abs(gradient), 'grad_x_input': gradient * pixels,
              'integrated_gradients': gradient * pixels, 'smoothgrad': gradient}[method]
  maps = attribution.attribute(method, logits_fn, SPACE, SPACE.to_inputs(pixels), targets, jax.random.key(0),
                               ig_steps=8, smoothgrad_samples=4)
  np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)


def test_rank_correlation_is_spearmans_of_absolute_values():
  a = np.array([[1.0, 2.0, 3.0, 4.0], [-4.0, 1.0, 2.0, 3.0]])
  b = np.array([[4.0, 3.0, 2.0, 1.0], [4.0, 1.0, 2.0, 3.0]])
  np.testing.assert_allclose(attribution.rank_correlations(a, b), [-1.0, 1.0])
  # Ranks, not values: a monotone but nonlinear change keeps the correlation at 1.
  np.testing.assert_allclose(attribution.rank_correlations(a[:1], a[:1] ** 3), [1.0])


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('explain') / 'run'
  config = tiny_config('mlp', **{'train.num_steps': 100, 'train.eval_every': 100, 'train.log_every': 100,
                                 'train.checkpoint_every': 100})
  train.train(config, str(workdir))
  return workdir


def test_explain_command_writes_complete_integrated_gradients_and_plots(trained_run):
  proc = launch('explain', f'--workdir={trained_run}', '--num=6', '--target=label', timeout=240)
  assert proc.returncode == 0, proc.stderr
  report = json.loads((trained_run / 'explain.json').read_text())
  assert report['step'] == 100 and report['target'] == 'label' and len(report['labels']) == 6
  assert set(report['methods']) == set(attribution.METHODS)
  # Completeness (Sundararajan et al.): the attributions sum to f(x) - f(black) within 1 %.
  ig = report['methods']['integrated_gradients']
  assert len(ig['completeness_errors']) == 6 and ig['completeness_error_max'] < 0.01
  for method, entry in report['methods'].items():
    assert len(entry['rank_correlations']) == 6 and -1 <= entry['rank_correlation_with_reinitialised'] <= 1
    assert (trained_run / f'explain_{method}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert f'| integrated_gradients | {ig["rank_correlation_with_reinitialised"]:.3f} |' in proc.stdout


def test_integrated_gradients_with_too_few_steps_is_reported_incomplete(trained_run, tmp_path):
  """The completeness error is measured, not assumed: one trapezoid step on a ReLU network misses."""
  proc = launch('explain', f'--workdir={trained_run}', '--num=6', '--methods=integrated_gradients', '--ig_steps=1',
                timeout=240)
  assert proc.returncode == 0, proc.stderr
  report = json.loads((trained_run / 'explain.json').read_text())
  assert report['methods']['integrated_gradients']['completeness_error_max'] > 0.01


def test_figures_show_at_most_max_panels_examples_and_the_report_all(trained_run):
  def size(num):
    report = explain.explain(str(trained_run), num=num, methods=['saliency'])
    png = (trained_run / 'explain_saliency.png').read_bytes()
    return len(report['labels']), (int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big'))  # header
  (few, few_size), (many, many_size) = size(explain.MAX_PANELS), size(3 * explain.MAX_PANELS)
  assert (few, many) == (explain.MAX_PANELS, 3 * explain.MAX_PANELS) and many_size == few_size


@pytest.mark.parametrize('args, message', [
    (['--methods=saliency,occlusion'], 'unknown attribution method(s) occlusion'),
    (['--num=0'], '--num must be positive, got 0'),
    (['--target=logit'], "--target must be one of predicted, label, got 'logit'"),
    (['--split=validation'], "--split 'validation' is not a split of this run; it has test"),
    (['--ig_steps=0'], '--ig_steps must be positive, got 0'),
    (['--workdir=/nonexistent/run'], 'holds no run'),
    (['--workdir=LM'], "holds a 'language_model' run; explain needs a classification run"),
])
def test_explain_command_bad_input_is_one_line(trained_run, tmp_path, args, message):
  if args == ['--workdir=LM']:
    (tmp_path / 'config.json').write_text('{"task": "language_model"}')
    args = [f'--workdir={tmp_path}']
  proc = launch('explain', f'--workdir={trained_run}', *args, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith('error: ') and message in line
