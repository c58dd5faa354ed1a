"""Shared helpers: tiny configs that train in seconds."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch.py')


def launch(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
  """`python launch.py *args` run from the repo root, its stdout and stderr captured as text."""
  return subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                        **kwargs)


def tiny_config(name: str = 'cnn', **overrides):
  """configs/mnist1d/<name>.py with few steps and a small dataset; overrides as dotted keys."""
  from jaxlab import config as config_lib
  config = config_lib.load(os.path.join(ROOT, 'configs', 'mnist1d', f'{name}.py'))
  settings = {'data.num_samples': 1000, 'data.batch_size': 40, 'data.eval_batch_size': 200,
              'train.num_steps': 20, 'train.log_every': 5, 'train.eval_every': 10, 'train.checkpoint_every': 10}
  settings.update(overrides)
  for key, value in settings.items():
    config_lib.set_value(config, key, value)
  return config


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One fresh persistent XLA cache for the session's in-process runs, as launch.py uses one: runs
  that differ only in seed or workdir compile the same programs."""
  from jaxlab import parallel
  parallel.enable_compilation_cache(str(tmp_path_factory.mktemp('xla_cache')))


@pytest.fixture
def python():
  return sys.executable
