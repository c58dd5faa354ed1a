"""Shared helpers: tiny configs that train in seconds."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch.py')
DATA_DIR = os.environ.get('JAXLAB_DATA_DIR', '')  # the real datasets (../shared/data); .ci/run sets it


def needs_data(*paths: str) -> pytest.MarkDecorator:
  """The mark of every test that reads real dataset files: skipped, saying which, unless each of `paths`
  (relative to $JAXLAB_DATA_DIR) exists."""
  missing = [p for p in paths if not (DATA_DIR and os.path.exists(os.path.join(DATA_DIR, p)))]
  where = f'JAXLAB_DATA_DIR={DATA_DIR}' if DATA_DIR else 'JAXLAB_DATA_DIR is unset'
  return pytest.mark.skipif(bool(missing), reason=f'needs {", ".join(missing)} under $JAXLAB_DATA_DIR ({where}; '
                                                  'the folder ../shared/data has them)')


def launch(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
  """`python launch.py *args` run from the repo root, its stdout and stderr captured as text."""
  return subprocess.run([sys.executable, LAUNCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                        **kwargs)


def sigterm_at(stop_step: int):
  """A train.train hook that sends this process SIGTERM (a preemption) after step `stop_step`."""
  import signal

  def hook(step, state):
    if step == stop_step:
      os.kill(os.getpid(), signal.SIGTERM)
  return hook


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


LM_MODELS = {  # tiny versions of configs/shakespeare_char/<name>.py
    'gpt': {'model.num_layers': 1, 'model.num_heads': 2, 'model.width': 16},
    'bert': {'model.num_layers': 1, 'model.num_heads': 2, 'model.width': 16},
    'lstm': {'model.hidden': 16, 'model.num_layers': 2},
}


def write_corpus(path, num_words: int = 4000, seed: int = 0) -> str:
  """A made-up ASCII text (words of a 26-letter alphabet, punctuation, line breaks) at `path`."""
  import numpy as np
  rng = np.random.default_rng(seed)
  words = [''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), rng.integers(1, 8))) for _ in range(300)]
  text = ' '.join(rng.choice(words, num_words)).replace('a ', 'a.\n').replace('e ', 'e, ')
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


def tiny_lm_config(corpus: str, name: str = 'gpt', **overrides):
  """configs/shakespeare_char/<name>.py, a tiny model on the text at `corpus`, 20 steps."""
  from jaxlab import config as config_lib
  config = config_lib.load(os.path.join(ROOT, 'configs', 'shakespeare_char', f'{name}.py'))
  settings = {'data.path': corpus, 'data.block_size': 16, 'data.batch_size': 8, 'data.eval_windows': 40,
              'data.eval_batch_size': 20, 'train.num_steps': 20, 'train.log_every': 5, 'train.eval_every': 10,
              'train.checkpoint_every': 10, 'optimizer.warmup_steps': 2, **LM_MODELS[name]}
  if 'sample' in config:
    settings['sample.num_tokens'] = 24
  settings.update(overrides)
  for key, value in settings.items():
    config_lib.set_value(config, key, value)
  return config


@pytest.fixture
def corpus(tmp_path):
  return write_corpus(tmp_path / 'corpus.txt')


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One fresh persistent XLA cache for the session's in-process runs, as launch.py uses one: runs
  that differ only in seed or workdir compile the same programs."""
  from jaxlab import parallel
  parallel.enable_compilation_cache(str(tmp_path_factory.mktemp('xla_cache')))


@pytest.fixture
def python():
  return sys.executable


TRAIN_ON_DEVICES = '''
import json, sys, jax, numpy as np
sys.path.insert(0, {tests!r})
{setup}
from jaxlab.run import train
assert jax.device_count() == {devices}, jax.devices()
last = config.train.num_steps
summary = train.train(config, {workdir!r}, hooks=[lambda step, state: step == last and np.savez(
    {out!r}, *[np.asarray(x) for x in jax.tree.leaves(state.params)])])
print('SUMMARY', json.dumps(summary))
'''


def train_on_devices(tmp_path, devices: int, setup: str) -> tuple[list, dict]:
  """Trains the `config` that the code `setup` defines (it may import from tests/) in a fresh process with
  `devices` simulated CPU devices: (its parameters at the last step as numpy arrays, its summary)."""
  import json

  import numpy as np
  out, workdir = str(tmp_path / f'{devices}.npz'), str(tmp_path / f'run-{devices}')
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}
  code = TRAIN_ON_DEVICES.format(tests=os.path.join(ROOT, 'tests'), setup=setup, devices=devices, workdir=workdir,
                                 out=out)
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"mesh {{'data': {devices}, 'fsdp': 1, 'tensor': 1}}" in proc.stdout
  with np.load(out) as f:
    leaves = [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))]
  return leaves, json.loads(proc.stdout.split('SUMMARY')[1].strip().splitlines()[0])
