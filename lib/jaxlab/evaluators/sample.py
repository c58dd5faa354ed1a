"""`launch.py sample`: text from a language-model run, or a grid of images from a GAN or VAE run (its newest
or best checkpoint)."""

from __future__ import annotations

import os
import types
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath

from jaxlab import config as config_lib
from jaxlab import data, tasks
from jaxlab.data import text
from jaxlab.errors import ConfigError, DataError
from jaxlab.observe import images, logging
from jaxlab.observe.logging import SHOWCASE_DIR
from jaxlab.run import checkpoint, program, stop

MAX_IMAGES = 1024  # in one grid PNG (32 x 32 images)
# What one generated token costs in memory: the int32 buffer on the device and on the host, the int64 ids
# decoding reads, and up to 4 bytes of Python text.
BYTES_PER_TOKEN = 4 + 4 + 8 + 4


def available_memory() -> int:
  """Bytes free for a reader's arrays: the host's available memory, and the device's limit if it reports one."""
  host = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  stats = jax.devices()[0].memory_stats() or {}
  device = stats.get('bytes_limit', host) - stats.get('bytes_in_use', 0)
  return min(host, device)


def check_text_fits(num_samples: int, length: int) -> None:
  """One line, before anything is allocated, if `num_samples` texts of `length` tokens cannot fit in memory."""
  need, have = num_samples * length * BYTES_PER_TOKEN, available_memory() // 2
  if need > have:
    raise ConfigError(f'{num_samples} sample(s) of {length:,} tokens need ~{need / 2**30:,.1f} GiB, more than half '
                      f'the {have * 2 / 2**30:.1f} GiB of memory available; ask for fewer --num_tokens or '
                      f'--num_samples (at most ~{have // (num_samples * BYTES_PER_TOKEN):,} tokens per sample here)')


def _restore_state(workdir: str, task: Any, example: Any, which: str) -> tuple[int, Any]:
  """(step, TrainState) of the newest or best checkpoint of `workdir`, on one device."""
  directory = epath.Path(workdir) / program.CHECKPOINT_DIRS[which]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0), example)
  target = checkpoint.abstract_with_shardings(abstract, jax.tree.map(lambda _: device, abstract))
  ckpt = checkpoint.Checkpointer(str(directory), keep=1_000_000)
  try:
    found = ckpt.restore_newest_good(target, lambda step, saved: None, move_aside=False)
  finally:
    ckpt.close()
  if found is None:
    raise ConfigError(f'no checkpoint in {directory}' + (' (the best one is kept only with '
                                                          'train.early_stopping_metric)' if which == 'best' else ''))
  return found[0], found[1]


def _read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json, as read: nothing it names is imported yet."""
  if not (epath.Path(workdir) / config_lib.CONFIG_FILE).exists():
    raise ConfigError(f'{workdir} holds no run (no {config_lib.CONFIG_FILE})')
  return config_lib.read_run(workdir)


def _saved_config(workdir: str, which: str = 'newest') -> ml_collections.ConfigDict:
  """The run's config, refused unless its checkpoints were saved by it (nothing it names is imported before)."""
  config = _read_config(workdir)
  directory = epath.Path(workdir) / program.CHECKPOINT_DIRS[which]
  if directory.exists():
    ckpt = checkpoint.Checkpointer(str(directory), keep=1_000_000)
    try:
      program.check_saved_config(ckpt, config, workdir)
    finally:
      ckpt.close()
  return config


def is_text_run(workdir: str) -> bool:
  """Whether `workdir` holds a run on text, whose samples are texts, not images (deciding imports nothing, so
  the checkpoint's config is checked later, once, by the path that builds the model)."""
  return _read_config(workdir).data.name == 'text'


def images_from_workdir(workdir: str, num: int, seed: int, which: str = 'newest') -> tuple[int, str]:
  """Writes a grid of `num` images drawn from the generator or VAE of `workdir` (seed `seed`) to its samples/
  folder; returns (checkpoint step, the PNG's path)."""
  config_lib.require(num > 0, f'--num must be positive, got {num}')
  config_lib.require(num <= MAX_IMAGES, f'--num {num} images do not fit one grid; at most {MAX_IMAGES}')
  config = _saved_config(workdir, which)
  source = data.make_source(config.data, config.seed)  # no workdir: a reader writes nothing there
  task = tasks.make(config, source, program.read_run)
  if not hasattr(task, 'sample_images'):
    raise ConfigError(f'{workdir} holds a {config.task!r} run, which does not generate images; sample needs a '
                      'gan or vae run, or a language model')
  step, state = _restore_state(workdir, task, source.example_batch(), which)
  path = epath.Path(workdir) / SHOWCASE_DIR / f'sample_step{step}_seed{seed}_{num}.png'
  grid = images.grid(task.sample_images(state, jax.random.key(seed), num))
  with stop.deferred():  # the PNG whole, or none
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.write_png(path, grid)
  return step, str(path)


def load_run(workdir: str, which: str = 'newest') -> tuple[ml_collections.ConfigDict, text.Vocabulary, Any]:
  """A language-model run's config, vocabulary and task, read from its workdir (no corpus needed)."""
  config = _saved_config(workdir, which)
  vocab = text.read_vocabulary(workdir)
  if vocab is None and config.data.name == 'text':
    raise DataError(f'{epath.Path(workdir) / text.VOCABULARY_FILE} is missing; sample decodes with the vocabulary '
                    'the run was trained with (one built again from the corpus of today may map tokens to other '
                    'characters)')
  if vocab is None:
    raise ConfigError(f'{workdir} is not a language-model run (task {config.task!r} on data {config.data.name!r}); '
                      'sample needs a GPT or RNN language model trained on text')
  # A task's factory reads only the vocabulary and the window length from its source.
  source = types.SimpleNamespace(vocab=vocab, num_classes=vocab.size, block_size=config.data.block_size)
  task = tasks.make(config, source, program.read_run)
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
  check_text_fits(num_samples, len(prompt) + num_tokens)
  config, vocab, task = load_run(workdir, which)
  config_lib.require(0 <= top_k <= vocab.size, f'--top_k must be in [0, {vocab.size}] (0: all tokens), got {top_k}')
  try:
    tokens = vocab.encode(prompt)
  except ConfigError as e:
    raise ConfigError(f'--prompt: {e}') from None
  example = {'x': np.zeros((1, config.data.block_size), np.int32), 'y': np.zeros((1, config.data.block_size), np.int32)}
  try:
    step, state = _restore_state(workdir, task, example, which)
  except checkpoint.CheckpointMismatchError as e:
    raise ConfigError(f'{e}: {epath.Path(workdir) / text.VOCABULARY_FILE} ({vocab.kind}, {vocab.size} tokens) is '
                      'not the vocabulary the run was trained with') from None
  out = task.generate(state.params, np.tile(tokens, (num_samples, 1)), jax.random.key(seed), num_tokens, temperature,
                      top_k, between_chunks=lambda _: stop.check())
  return step, [vocab.decode(row) for row in np.asarray(out)]


def define_command() -> Callable[[Any], None]:
  """`sample`: text from a language-model run; from a GAN or VAE run, a grid of images in its samples/ folder."""
  prompt = flags.DEFINE_string('prompt', '\n', 'Language model: the text to continue (default: a newline).')
  num_tokens = flags.DEFINE_integer('num_tokens', 500, 'Language model: tokens to generate per sample.')
  temperature = flags.DEFINE_float('temperature', 1.0, 'Language model: softmax temperature; 0 is greedy.')
  top_k = flags.DEFINE_integer('top_k', 0, 'Language model: draw only from the k likeliest tokens (0: all).')
  num_samples = flags.DEFINE_integer('num_samples', 1, 'Language model: how many texts.')
  num = flags.DEFINE_integer('num', 16, 'GAN or VAE: how many images.')
  seed = flags.DEFINE_integer('seed', 0, 'The random seed; the same seed gives the same samples.')
  which = flags.DEFINE_enum('checkpoint', 'newest', ['newest', 'best'],
                            'The newest checkpoint, or the best one kept by early stopping.')

  text_flags = {'prompt': prompt, 'num_tokens': num_tokens, 'temperature': temperature, 'top_k': top_k,
                'num_samples': num_samples}

  def command(invocation: Any) -> None:
    workdir = invocation.run_to_read('sample', 'the run to sample from')
    text_run = is_text_run(workdir)
    kind, other = ('text', 'GAN or VAE') if text_run else ('image', 'language-model')
    for name, holder in ({'num': num} if text_run else text_flags).items():
      config_lib.require(not holder.present, f'--{name} is a flag for a {other} run; {workdir} holds a {kind} run')
    if not text_run:
      step, path = images_from_workdir(workdir, num.value, seed.value, which.value)
      print(f'{num.value} images | {which.value} checkpoint, step {step} | seed {seed.value} | {path}')
      return
    step, texts = from_workdir(workdir, prompt.value, num_tokens.value, temperature.value, top_k.value, seed.value,
                               num_samples.value, which.value)
    for i, sample_text in enumerate(texts):
      print(f'--- sample {i + 1}/{len(texts)} | {which.value} checkpoint, step {step} | seed {seed.value} ---')
      print(sample_text, flush=True)
  return command
