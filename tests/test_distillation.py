"""Knowledge distillation: the soft-target loss against its formulas, and the task through the loop."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import launch, sigterm_at, tiny_config

from jaxlab.errors import ConfigError
from jaxlab.run import program as program_lib
from jaxlab.run import train
from jaxlab.tasks.distillation import soft_target_loss


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_soft_target_loss_is_t_squared_kl_and_zero_for_the_teacher_itself():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(4, 10)) * 3, rng.normal(size=(4, 10)) * 3
  for t in (1.0, 4.0):
    p, q = _softmax(teacher / t), _softmax(student / t)
    expected = t ** 2 * np.mean(np.sum(p * np.log(p / q), -1))
    np.testing.assert_allclose(soft_target_loss(jnp.asarray(student), jnp.asarray(teacher), t), expected, rtol=1e-5)
  assert abs(float(soft_target_loss(jnp.asarray(teacher), jnp.asarray(teacher), 20.0))) < 1e-6


def test_gradient_is_t_times_the_softened_difference_and_at_high_t_the_logit_difference_over_classes():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
  student -= student.mean(-1, keepdims=True)  # Hinton et al.'s eq. 4 assumes zero-mean logits
  teacher -= teacher.mean(-1, keepdims=True)
  grad = lambda t: np.asarray(jax.grad(soft_target_loss)(jnp.asarray(student), jnp.asarray(teacher), t))
  for t in (1.0, 3.0):  # d/dz T^2 KL = T (q - p), per example of a batch mean
    np.testing.assert_allclose(grad(t), t * (_softmax(student / t) - _softmax(teacher / t)) / 3, rtol=1e-4, atol=1e-7)
  # The T^2 factor keeps the size: at high T the gradient tends to (z - v) / N (Hinton et al. eq. 3-4),
  # whatever T is; what is left shrinks as 1 / T.
  limit = (student - teacher) / 10 / 3
  error = lambda t: np.max(np.abs(grad(t) - limit))
  assert error(1000.0) < 1e-4 * np.max(np.abs(limit)) * 10 and error(1000.0) < error(100.0) / 5


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('teacher')
  config = tiny_config('mlp', **{'model.hidden': (32,), 'train.num_steps': 40})
  train.train(config, str(workdir))
  return workdir


def _student(teacher_dir, **overrides):
  config = tiny_config('mlp', **{'model.hidden': (16,), **overrides})
  with config.unlocked():
    config.task = 'distillation'
    config.distill = dict(teacher=str(teacher_dir), temperature=4.0, hard_weight=0.0)
  return config


def _metrics(workdir, key):
  lines = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  return [line[key] for line in lines if key in line]


def test_a_student_that_is_the_teacher_has_zero_soft_loss(teacher, tmp_path):
  config = _student(teacher, **{'model.hidden': (32,), 'init.workdir': str(teacher),
                                'optimizer.learning_rate': 0.0})
  summary = train.train(config, str(tmp_path))
  losses = _metrics(tmp_path, 'soft_loss')
  assert losses and max(abs(v) for v in losses) < 1e-5
  teacher_summary = json.loads((teacher / 'summary.json').read_text())
  assert summary['test_accuracy'] == teacher_summary['test_accuracy']


def test_distillation_lowers_the_soft_loss_and_resumes_bitwise(teacher, tmp_path):
  config = _student(teacher, **{'train.num_steps': 30, 'train.checkpoint_every': 100})
  whole = train.train(config, str(tmp_path / 'whole'))
  losses = _metrics(tmp_path / 'whole', 'soft_loss')
  assert losses[-1] < 0.5 * losses[0]

  assert train.train(config, str(tmp_path / 'resumed'), hooks=[sigterm_at(12)])['preempted']
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert resumed['steps_trained'] < 30 and resumed['test_loss'] == whole['test_loss']
  ours = [jax.device_get(program_lib.restore_checkpoint(config, str(tmp_path / w))[2].params) for w in ('whole', 'resumed')]
  for a, b in zip(jax.tree.leaves(ours[0]), jax.tree.leaves(ours[1]), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('distill, message', [
    ({'temperature': 0.0}, 'distill.temperature must be positive, got 0.0'),
    ({'teacher': ''}, 'distill.teacher is empty'),
    ({'teacher': '/nonexistent/run'}, '/nonexistent/run holds no run (no readable config.json)'),
])
def test_bad_distillation_settings_are_one_line(teacher, tmp_path, distill, message):
  config = _student(teacher)
  config.distill.update(distill)
  with pytest.raises(ConfigError, match=re.escape(message)):
    train.train(config, str(tmp_path))


def test_a_teacher_that_is_not_a_classifier_is_refused_by_the_command(teacher, tmp_path):
  saved = json.loads((teacher / 'config.json').read_text())
  saved['task'] = 'language_model'
  fake = tmp_path / 'fake'
  fake.mkdir()
  (fake / 'config.json').write_text(json.dumps(saved))
  result = launch('--config=configs/mnist1d/mlp.py', f'--workdir={tmp_path / "run"}', '--config.task=distillation',
                  '--config.train.num_steps=2')
  assert result.returncode == 2 and result.stderr.strip().startswith('error: task distillation needs a distill block')
  config = _student(fake)
  with pytest.raises(ConfigError, match="holds a 'language_model' run, not a classification run"):
    train.train(config, str(tmp_path / 'run2'))
