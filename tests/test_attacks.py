"""FGSM and PGD: bounds, pixel space, a hand-computed FGSM on a linear model, PGD at least as strong,
and robust accuracy through the training loop's evaluation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxlab.errors import ConfigError
from jaxlab.run import train
from jaxlab.tasks import attacks

SPACE = attacks.PixelSpace(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.5), low=0.0, high=1.0)


def _linear(seed=0, features=4 * 4 * 3, classes=5):
  rng = np.random.default_rng(seed)
  w, b = rng.normal(size=(features, classes)).astype(np.float32), rng.normal(size=classes).astype(np.float32)
  return w, b, lambda x: x.reshape(len(x), -1) @ w + b


def _batch(n=32, seed=1):
  rng = np.random.default_rng(seed)
  pixels = rng.uniform(0, 1, (n, 4, 4, 3)).astype(np.float32)
  pixels[:4] = np.round(pixels[:4])  # some pixels at the bounds, where clipping must act
  return pixels, rng.integers(0, 5, n)


@pytest.mark.parametrize('method', ['fgsm', 'pgd'])
def test_perturbed_pixels_stay_within_eps_and_the_pixel_range(method):
  _, _, logits_fn = _linear()
  pixels, labels = _batch()
  x = SPACE.to_inputs(jnp.asarray(pixels))
  attack = attacks.Attack(method, 0.1, steps=5, step_size=0.03, restarts=2)
  adversarial = np.asarray(SPACE.to_pixels(attacks.perturb(attack, logits_fn, x, labels, jax.random.key(3), SPACE)))
  assert np.abs(adversarial - pixels).max() <= 0.1 + 1e-6
  assert adversarial.min() >= 0 and adversarial.max() <= 1
  assert np.abs(adversarial - pixels).max() >= 0.1 - 1e-6  # it did move, as far as allowed
  # In the model's units a pixel step of eps is eps / std of its channel.
  step = np.abs(np.asarray(attacks.perturb(attack, logits_fn, x, labels, jax.random.key(3), SPACE)) - np.asarray(x))
  assert np.all(step.max(axis=(0, 1, 2)) <= 0.1 / np.array(SPACE.std) + 1e-5)


def test_fgsm_on_a_linear_model_matches_the_hand_gradient():
  w, b, logits_fn = _linear()
  pixels, labels = _batch()
  x = np.asarray(SPACE.to_inputs(jnp.asarray(pixels))).reshape(len(pixels), -1)
  logits = x @ w + b
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  grad_x = (probs - np.eye(5)[labels]) @ w.T  # d cross-entropy / d inputs of a softmax regression
  grad_pixels = grad_x.reshape(pixels.shape) / np.array(SPACE.std)  # x = (p - mean) / std
  expected = np.clip(pixels + 0.05 * np.sign(grad_pixels), 0, 1)
  got = SPACE.to_pixels(attacks.fgsm(logits_fn, SPACE.to_inputs(jnp.asarray(pixels)), labels, 0.05, SPACE))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)


def test_pgd_finds_at_least_the_loss_of_fgsm():
  import optax
  rng = np.random.default_rng(0)
  w1, w2 = rng.normal(size=(48, 32)).astype(np.float32) / 4, rng.normal(size=(32, 5)).astype(np.float32) / 4
  logits_fn = lambda x: jnp.tanh(x.reshape(len(x), -1) @ w1) @ w2  # not linear: one step is not optimal
  pixels, labels = _batch(n=64)
  x = SPACE.to_inputs(jnp.asarray(pixels))
  loss = lambda inputs: float(optax.softmax_cross_entropy_with_integer_labels(logits_fn(inputs), labels).mean())
  fgsm = attacks.fgsm(logits_fn, x, labels, 0.05, SPACE)
  pgd = attacks.pgd(logits_fn, x, labels, 0.05, steps=20, step_size=0.01, restarts=3, rng=jax.random.key(0),
                    space=SPACE)
  assert loss(x) < loss(fgsm) < loss(pgd)


def test_robust_accuracy_is_logged_at_evaluation_and_falls_as_eps_grows(tmp_path):
  config = tiny_config('mlp', **{'train.num_steps': 150, 'train.eval_every': 150, 'train.log_every': 150,
                                 'train.checkpoint_every': 150, 'eval.attack_eps': (0.05, 0.2, 1.0),
                                 'eval.pgd_steps': 5})
  summary = train.train(config, str(tmp_path / 'run'))
  clean = summary['test_accuracy']
  for method in ('fgsm', 'pgd'):
    robust = [summary[f'test_{method}_eps{eps:g}_accuracy'] for eps in (0.05, 0.2, 1.0)]
    assert clean > robust[0] > robust[1] > robust[2], (clean, method, robust)
  assert summary['test_pgd_eps1_accuracy'] <= summary['test_fgsm_eps1_accuracy']
  assert clean > 0.3 and summary['test_pgd_eps1_accuracy'] < 0.05  # 10 classes: chance is 0.1


@pytest.mark.parametrize('override, message', [
    ({'eval.attacks': ('fgsm', 'cw')}, "eval.attacks: unknown method(s) ['cw']"),
    ({'eval.attack_eps': (0.1, -0.1)}, 'eval.attack_eps must be positive, got -0.1'),
    ({'eval.pgd_steps': 0}, 'eval.pgd_steps must be >= 1, got 0'),
])
def test_bad_attack_settings_are_one_line(override, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
    attacks.from_config(tiny_config('mlp', **{'eval.attack_eps': (0.1,), **override}))


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A tiny MNIST-1D MLP that reported robust accuracy at eps 0.2 during training."""
  workdir = tmp_path_factory.mktemp('attack') / 'run'
  config = tiny_config('mlp', **{'train.num_steps': 100, 'train.eval_every': 100, 'train.log_every': 100,
                                 'train.checkpoint_every': 100, 'eval.attack_eps': (0.2,), 'eval.pgd_steps': 3})
  return workdir, train.train(config, str(workdir))


def test_attack_command_evaluates_a_finished_run_and_writes_json_and_png(trained_run):
  import json

  from conftest import launch
  workdir, summary = trained_run
  proc = launch('attack', f'--workdir={workdir}', '--eps=0.2,0.6', '--pgd_steps=3', timeout=180)
  assert proc.returncode == 0, proc.stderr
  report = json.loads((workdir / 'attack.json').read_text())
  assert report['step'] == 100 and report['eps'] == [0.2, 0.6] and report['methods'] == ['fgsm', 'pgd']
  test = report['splits']['test']
  assert test['clean'] == summary['test_accuracy']
  # The same attack as the run's own evaluation gives the same numbers; a larger eps, lower ones.
  assert test['fgsm'][0] == summary['test_fgsm_eps0.2_accuracy'] and test['pgd'][0] == summary['test_pgd_eps0.2_accuracy']
  assert test['clean'] > test['fgsm'][0] > test['fgsm'][1] and test['pgd'][0] > test['pgd'][1]
  assert f'| test | pgd | {100 * test["clean"]:.2f} % | {100 * test["pgd"][0]:.2f} % |' in proc.stdout
  assert (workdir / 'attack.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('args, message', [
    (['--eps=0.1,abc'], "--eps must be numbers, got '0.1,abc'"),
    (['--eps=0.1,-0.2'], 'eval.attack_eps must be positive, got -0.2'),
    (['--eps=0.1,inf'], 'eval.attack_eps must be finite, got inf'),
    (['--attacks=fgsm,deepfool'], "eval.attacks: unknown method(s) ['deepfool']"),
    (['--workdir=/nonexistent/run'], 'holds no run'),
    (['--workdir=LM'], "holds a 'language_model' run; attack needs a classification run"),
])
def test_attack_command_bad_input_is_one_line(trained_run, tmp_path, args, message):
  from conftest import launch
  workdir, _ = trained_run
  if args == ['--workdir=LM']:
    (tmp_path / 'config.json').write_text('{"task": "language_model"}')
    args = [f'--workdir={tmp_path}']
  proc = launch('attack', f'--workdir={workdir}', *args, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith('error: ') and message in line


def _softmax_cross_entropy(logits, labels):
  shifted = logits - logits.max(1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels]


@pytest.mark.parametrize('command', ['attack', 'explain'])
def test_a_reader_imports_no_code_a_run_folder_names_unless_its_checkpoint_was_saved_by_it(trained_run, tmp_path,
                                                                                          command):
  """config.json edited to name a model module of someone else's: refused before that module is imported."""
  import json
  import shutil

  from conftest import launch
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run[0], workdir)
  saved = json.loads((workdir / 'config.json').read_text())
  saved['model']['name'] = 'planted_module:Model'
  (workdir / 'config.json').write_text(json.dumps(saved))
  (tmp_path / 'planted_module.py').write_text(f'open({str(tmp_path / "imported")!r}, "w").close()\nModel = None\n')
  proc = launch(command, f'--workdir={workdir}', env={**os.environ, 'PYTHONPATH': str(tmp_path)}, timeout=180)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-3000:]
  assert 'was saved by a different config' in proc.stderr and 'model.name' in proc.stderr
  assert not (tmp_path / 'imported').exists()


def test_fgsm_adversarial_training_is_goodfellows_mixture_on_logistic_regression():
  """Loss and gradient of one step against numpy: 0.5 CE(x) + 0.5 CE(x + eps sign grad_x CE), with the
  adversarial example a constant of the weights."""
  from jaxlab import data, tasks
  config = tiny_config('logistic', **{'loss.adversarial': 'fgsm', 'loss.adversarial_eps': 0.3})
  source = data.make_source(config.data, 0)
  task = tasks.make(config, source)
  batch = next(source.train_batches(0))
  state = task.init(jax.random.PRNGKey(0), batch)
  grads, metrics, _ = task.gradients(state, batch)
  (kernel_path, w), = [(p, np.asarray(v)) for p, v in jax.tree_util.tree_leaves_with_path(state.params)
                        if p[-1].key == 'kernel']
  b = np.asarray([v for p, v in jax.tree_util.tree_leaves_with_path(state.params) if p[-1].key == 'bias'][0])
  x, y = batch['x'].reshape(len(batch['y']), -1).astype(np.float64), batch['y']
  onehot = np.eye(10)[y]
  softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
  x_adv = x + 0.3 * np.sign((softmax(x @ w + b) - onehot) @ w.T)
  expected = 0.5 * _softmax_cross_entropy(x @ w + b, y).mean() + 0.5 * _softmax_cross_entropy(x_adv @ w + b, y).mean()
  np.testing.assert_allclose(float(metrics['loss']), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['adversarial_loss']), _softmax_cross_entropy(x_adv @ w + b, y).mean(),
                             rtol=1e-5)
  expected_grad = (0.5 * x.T @ (softmax(x @ w + b) - onehot) + 0.5 * x_adv.T @ (softmax(x_adv @ w + b) - onehot)) / len(y)
  got_grad = [np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads) if p == kernel_path][0]
  np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_pgd_adversarial_training_raises_robust_accuracy(tmp_path):
  def robust_accuracy(method):
    config = tiny_config('mlp', **{'data.num_samples': 2000, 'train.num_steps': 300, 'train.eval_every': 300,
                                   'train.log_every': 300, 'train.checkpoint_every': 300, 'eval.attack_eps': (0.2,),
                                   'eval.attacks': ('pgd',), 'eval.pgd_steps': 10, 'loss.adversarial': method,
                                   'loss.adversarial_eps': 0.2, 'loss.adversarial_steps': 5})
    summary = train.train(config, str(tmp_path / (method or 'natural')))
    return summary['test_pgd_eps0.2_accuracy']
  natural, adversarial = robust_accuracy(''), robust_accuracy('pgd')  # measured: 0.087 and 0.26
  assert adversarial > natural + 0.08, (natural, adversarial)


@pytest.mark.parametrize('override, message', [
    ({'loss.adversarial': 'cw'}, "loss.adversarial: unknown method 'cw'"),
    ({'loss.adversarial': 'pgd', 'loss.adversarial_eps': 0.0}, 'loss.adversarial_eps must be positive, got 0.0'),
    ({'loss.adversarial': 'pgd', 'loss.adversarial_weight': 1.5}, 'loss.adversarial_weight must be in [0, 1]'),
    ({'loss.adversarial': 'pgd', 'loss.adversarial_steps': 0}, 'loss.adversarial_steps must be >= 1, got 0'),
])
def test_bad_adversarial_training_settings_are_one_line(override, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
    attacks.training_attack(tiny_config('mlp', **override).loss)
