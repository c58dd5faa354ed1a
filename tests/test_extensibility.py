"""A researcher's own model or task, named by import path, trains without any edit of lib/."""

import json
import os

import pytest
from conftest import ROOT, launch, tiny_config

from jaxlab import config as config_lib
from jaxlab import models
from jaxlab.errors import ConfigError
from jaxlab.run import train

CUSTOM = os.path.join(ROOT, 'experiments', 'custom_model', 'config.py')

MY_TASK = '''
import jax.numpy as jnp
from jaxlab import tasks


class Counting:
  """Classification plus a metric of its own, so the log shows this task ran."""

  def __init__(self, base):
    self.base = base

  def init(self, rng, batch):
    return self.base.init(rng, batch)

  def train_step(self, state, batch):
    state, metrics = self.base.train_step(state, batch)
    return state, {**metrics, 'positive_labels': jnp.mean(batch['y'] > 0)}

  def eval_step(self, state, batch):
    return self.base.eval_step(state, batch)


def make(config, source):
  return Counting(tasks.classification(config, source))
'''


def test_the_example_model_in_experiments_trains_through_launch(tmp_path):
  workdir = tmp_path / 'run'
  proc = launch(f'--config={CUSTOM}', '--config.train.num_steps=30', '--config.train.eval_every=30',
                '--config.data.num_samples=1000', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['model']['name'] == 'experiments.custom_model.model:SeparableCNN1D'
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['step'] == 30 and summary['test_accuracy'] > 0.2  # above chance (0.1) after 30 steps


def test_a_task_of_ones_own_by_import_path(tmp_path, monkeypatch):
  (tmp_path / 'my_tasks.py').write_text(MY_TASK)
  monkeypatch.syspath_prepend(str(tmp_path))
  config = tiny_config(task='my_tasks:make')
  train.train(config, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    records = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert records and all(0.5 < r['positive_labels'] < 1 for r in records)  # ~9 of 10 MNIST-1D labels are > 0


@pytest.mark.parametrize('name,message', [
    ('no_such_package.models:Net', "model.name 'no_such_package.models:Net': cannot import no_such_package.models"),
    ('jaxlab.models:NoSuchNet', "model.name 'jaxlab.models:NoSuchNet': module jaxlab.models has no 'NoSuchNet'"),
    ('jaxlab.models:create', "model.name 'jaxlab.models:create' is not a flax.linen Module class"),
])
def test_bad_import_paths_are_one_line_errors(name, message):
  with pytest.raises(ConfigError) as info:
    models.create(config_lib.load(CUSTOM, [f'model.name={name}']).model, 10)
  assert str(info.value).startswith(message)


def test_an_outside_model_validates_its_own_attributes():
  config = config_lib.load(CUSTOM, ['model.channels=0'])
  with pytest.raises(ConfigError, match=r"^model 'experiments.custom_model.model:SeparableCNN1D': channels must be "
                                        r'positive, got 0$'):
    models.create(config.model, 10)


@pytest.mark.parametrize('override,message', [
    ('model.channels=0', "model 'cnn1d': channels must be positive, got 0"),
    ('model.kernel_sizes=(5, 3)', "model 'cnn1d': kernel_sizes (5, 3) and strides (2, 2, 2) differ in length"),
    ('model.conv=fft', "model 'cnn1d': unknown conv 'fft'; choose from xla, matmul"),
])
def test_built_in_models_validate_their_own_attributes(override, message):
  config = config_lib.load(os.path.join(ROOT, 'configs', 'mnist1d', 'cnn.py'), [override])
  with pytest.raises(ConfigError) as info:
    models.create(config.model, 10)
  assert str(info.value) == message
