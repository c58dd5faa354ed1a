"""`launch.py sample`: text from the newest (or best) checkpoint of a language-model run."""

from __future__ import annotations

import types
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxlab import checkpoint, tasks, train
from jaxlab import config as config_lib
from jaxlab.data import text
from jaxlab.errors import ConfigError


def _restore_params(workdir: str, task: Any, block_size: int, which: str) -> tuple[int, Any]:
  directory = epath.Path(workdir) / train.CHECKPOINT_DIRS[which]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  example = {'x': np.zeros((1, block_size), np.int32), 'y': np.zeros((1, block_size), np.int32)}
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0), example)
  target = checkpoint.abstract_with_shardings(abstract, jax.tree.map(lambda _: device, abstract))
  ckpt = checkpoint.Checkpointer(str(directory), keep=1_000_000)
  try:
    found = ckpt.restore_newest_good(target, lambda step, saved: None)
  finally:
    ckpt.close()
  if found is None:
    raise ConfigError(f'no checkpoint in {directory}' + (' (the best one is kept only with '
                                                          'train.early_stopping_metric)' if which == 'best' else ''))
  return found[0], found[1].params


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, text.Vocabulary, Any]:
  """A language-model run's config, vocabulary and task, read from its workdir (no corpus needed)."""
  if not (epath.Path(workdir) / config_lib.CONFIG_FILE).exists():
    raise ConfigError(f'{workdir} holds no run (no {config_lib.CONFIG_FILE})')
  saved = config_lib.read_saved(workdir)
  if saved is None:
    raise ConfigError(f'{workdir}/{config_lib.CONFIG_FILE} is unreadable')
  config = ml_collections.ConfigDict(saved)
  vocab = text.read_vocabulary(workdir)
  if vocab is None:
    raise ConfigError(f'{workdir} is not a language-model run (task {config.task!r} on data {config.data.name!r}); '
                      'sample needs a GPT or RNN language model trained on text')
  # A task's factory reads only the vocabulary and the window length from its source.
  source = types.SimpleNamespace(vocab=vocab, num_classes=vocab.size, block_size=config.data.block_size)
  task = tasks.make(config, source)
  if not hasattr(task, 'generate'):
    raise ConfigError(f'{workdir} holds a {config.task!r} run, which cannot generate text; sample needs a GPT '
                      'or RNN language model (task language_model)')
  return config, vocab, task


def from_workdir(workdir: str, prompt: str, num_tokens: int, temperature: float, top_k: int, seed: int,
                 num_samples: int, which: str = 'newest') -> tuple[int, list[str]]:
  """(checkpoint step, `num_samples` texts, each the prompt and its continuation)."""
  config_lib.require(num_tokens > 0, f'--num_tokens must be positive, got {num_tokens}')
  config_lib.require(num_samples > 0, f'--num_samples must be positive, got {num_samples}')
  config_lib.require(temperature >= 0, f'--temperature must be >= 0, got {temperature}')
  config_lib.require(prompt != '', '--prompt is empty; give at least one character (the default is a newline)')
  config, vocab, task = load_run(workdir)
  config_lib.require(0 <= top_k <= vocab.size, f'--top_k must be in [0, {vocab.size}] (0: all tokens), got {top_k}')
  try:
    tokens = vocab.encode(prompt)
  except ConfigError as e:
    raise ConfigError(f'--prompt: {e}') from None
  step, params = _restore_params(workdir, task, config.data.block_size, which)
  out = task.generate(params, np.tile(tokens, (num_samples, 1)), jax.random.key(seed), num_tokens, temperature, top_k)
  return step, [vocab.decode(row) for row in np.asarray(out)]
