"""A plain-text corpus as next-token windows: character or byte vocabulary, nanoGPT's 90/10 split.

The training batch of step s holds windows of `block_size + 1` tokens at offsets drawn from
(seed, s), so a resumed run reads exactly the windows an uninterrupted one would. Evaluation
reads `eval_windows` fixed windows spread evenly over the validation split: the same for every
run and seed, so validation losses are comparable between runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxlab.data.pipeline import check_batch_sizes, eval_rows, host_slice
from jaxlab.errors import ConfigError

Batch = dict[str, np.ndarray]
VOCABULARY_FILE = 'vocabulary.json'
VOCABULARIES = ('char', 'byte')
DEFAULT_CORPUS = os.path.join('tinyshakespeare', 'input.txt')  # under $JAXLAB_DATA_DIR
# Mixed into the seed of every step's window offsets, apart from any other use of (seed, step).
WINDOW_DOMAIN = 0x74657874  # 'text'


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Token ids for text: 'char' (the corpus's characters, sorted) or 'byte' (UTF-8 bytes, 256 ids)."""

  kind: str
  symbols: str = ''  # the characters of a 'char' vocabulary, id = position

  @property
  def size(self) -> int:
    return 256 if self.kind == 'byte' else len(self.symbols)

  def encode(self, text: str) -> np.ndarray:
    if self.kind == 'byte':
      return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)
    codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    known = np.frombuffer(self.symbols.encode('utf-32-le'), np.uint32)  # sorted: ids by binary search
    ids = np.minimum(np.searchsorted(known, codes), len(known) - 1)
    if not np.array_equal(known[ids], codes):
      unknown = ''.join(sorted(set(text) - set(self.symbols)))
      raise ConfigError(f'character(s) {unknown!r} are not in the vocabulary of {self.size} characters '
                        f'{self.symbols!r}')
    return ids.astype(np.int32)

  def decode(self, tokens: np.ndarray) -> str:
    tokens = np.asarray(tokens).astype(np.int64)
    if self.kind == 'byte':
      return bytes(tokens.astype(np.uint8).tolist()).decode('utf-8', errors='replace')
    return ''.join(self.symbols[t] for t in tokens)

  def to_json(self) -> str:
    return json.dumps({'kind': self.kind, 'symbols': self.symbols})

  @classmethod
  def from_text(cls, kind: str, text: str | None) -> Vocabulary:
    return cls(kind, '' if kind == 'byte' else ''.join(sorted(set(text))))


def read_vocabulary(workdir: str) -> Vocabulary | None:
  """The vocabulary a run saved in its workdir, or None if it saved none."""
  path = epath.Path(workdir) / VOCABULARY_FILE
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
    kind, symbols = saved['kind'], saved['symbols']
  except (ValueError, KeyError, TypeError):
    raise ConfigError(f'{path} is not a vocabulary file; move it away to rebuild it from the corpus') from None
  problem = _vocabulary_problem(kind, symbols)
  if problem:
    raise ConfigError(f'{path} is damaged: {problem}')
  return Vocabulary(kind, symbols)


def _vocabulary_problem(kind: object, symbols: object) -> str | None:
  """What makes (kind, symbols) no vocabulary Vocabulary.to_json writes, or None."""
  if kind not in VOCABULARIES:
    return f'kind {kind!r} is not one of {", ".join(VOCABULARIES)}'
  if not isinstance(symbols, str):
    return f'symbols is {type(symbols).__name__} {symbols!r:.40}, not a string'
  if kind == 'byte' and symbols:
    return 'a byte vocabulary has no symbols (its ids are the 256 byte values)'
  if kind == 'char' and (not symbols or list(symbols) != sorted(set(symbols))):
    return 'the symbols of a char vocabulary are its distinct characters, sorted, at least one'
  return None


def corpus_path(cfg: ml_collections.ConfigDict) -> str:
  if cfg.path:
    return cfg.path
  root = os.environ.get('JAXLAB_DATA_DIR')
  if not root:
    raise ConfigError('data.path is empty and JAXLAB_DATA_DIR is not set; point either at the text corpus '
                      f'(default $JAXLAB_DATA_DIR/{DEFAULT_CORPUS})')
  return os.path.join(root, DEFAULT_CORPUS)


def read_corpus(path: str) -> bytes:
  try:
    raw = epath.Path(path).read_bytes()
  except FileNotFoundError:
    raise ConfigError(f'text corpus not found: {path}') from None
  except OSError as e:
    raise ConfigError(f'cannot read the text corpus {path}: {e.strerror or e}') from None
  if not raw:
    raise ConfigError(f'the text corpus {path} is empty')
  return raw


def decode_corpus(raw: bytes, path: str) -> str:
  """The corpus as text, for a 'char' vocabulary: bytes that are not UTF-8 are an error."""
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ConfigError(f'{path} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); a char vocabulary '
                      "needs decodable text, data.vocabulary='byte' reads any file") from None


@dataclasses.dataclass
class TextSource:
  """Train and validation token arrays served as (x, y) windows shifted by one token."""

  tokens: dict[str, np.ndarray]
  vocab: Vocabulary
  block_size: int
  batch_size: int
  eval_batch_size: int
  eval_windows: int
  seed: int

  def __post_init__(self):
    for split, tokens in self.tokens.items():
      if len(tokens) < self.block_size + 1:
        raise ConfigError(f'the {split} split has {len(tokens)} tokens, fewer than one window of data.block_size + 1 '
                          f'= {self.block_size + 1}; use a smaller block_size or a longer corpus')
    check_batch_sizes(len(self.tokens['train']) - self.block_size, self.batch_size, self.eval_batch_size,
                      jax.process_count())
    self._window = np.arange(self.block_size + 1)
    last = len(self.tokens['validation']) - self.block_size - 1
    self._eval_offsets = np.linspace(0, last, self.eval_windows).round().astype(np.int64)

  @property
  def num_classes(self) -> int:
    return self.vocab.size

  @property
  def eval_splits(self) -> list[str]:
    return ['validation']

  def _windows(self, split: str, offsets: np.ndarray) -> Batch:
    windows = self.tokens[split][offsets[:, None] + self._window]
    return {'x': windows[:, :-1], 'y': windows[:, 1:], 'offset': offsets.astype(np.int32)}

  def example_batch(self) -> Batch:
    return self._windows('train', np.zeros(1, np.int64))

  def train_offsets(self, step: int) -> np.ndarray:
    """Start positions of the global batch of `step`, a pure function of (seed, step)."""
    rng = np.random.default_rng([WINDOW_DOMAIN, self.seed, step])
    return rng.integers(0, len(self.tokens['train']) - self.block_size, self.batch_size)

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    mine = host_slice(self.batch_size, jax.process_index(), jax.process_count())
    step = start_step
    while True:
      yield self._windows('train', self.train_offsets(step)[mine])
      step += 1

  def eval_batches(self, split: str) -> Iterator[Batch]:
    for index in range(-(-self.eval_windows // self.eval_batch_size)):
      rows, mask = eval_rows(index, self.eval_batch_size, self.eval_windows, jax.process_index(), jax.process_count())
      yield {**self._windows(split, self._eval_offsets[rows]), 'mask': mask}


def _vocabulary(cfg: ml_collections.ConfigDict, text: str | None, workdir: str | None, path: str) -> Vocabulary:
  """The workdir's saved vocabulary if there is one (resume, sampling), else the corpus's, saved there."""
  saved = read_vocabulary(workdir) if workdir else None
  if saved is not None:
    if saved.kind != cfg.vocabulary:
      raise ConfigError(f'{workdir} was trained with a {saved.kind} vocabulary, data.vocabulary is {cfg.vocabulary!r}')
    unknown = set(text) - set(saved.symbols) if saved.kind == 'char' else set()
    if unknown:
      raise ConfigError(f'{path} holds characters {"".join(sorted(unknown))!r} that are not '
                        f'in the vocabulary saved in {workdir}')
    return saved
  vocab = Vocabulary.from_text(cfg.vocabulary, text)
  if workdir and jax.process_index() == 0:
    (epath.Path(workdir) / VOCABULARY_FILE).write_text(vocab.to_json())
  return vocab


def check(cfg: ml_collections.ConfigDict) -> None:
  if cfg.vocabulary not in VOCABULARIES:
    raise ConfigError(f'unknown data.vocabulary {cfg.vocabulary!r}; choose from {", ".join(VOCABULARIES)}')
  if not 0 < cfg.train_fraction < 1:
    raise ConfigError(f'data.train_fraction must be in (0, 1), got {cfg.train_fraction}')
  for key in ('block_size', 'eval_windows'):
    if cfg[key] < 1:
      raise ConfigError(f'data.{key} must be positive, got {cfg[key]}')


def load(cfg: ml_collections.ConfigDict, seed: int, workdir: str | None = None) -> TextSource:
  check(cfg)
  path = corpus_path(cfg)
  raw = read_corpus(path)
  text = decode_corpus(raw, path) if cfg.vocabulary == 'char' else None
  vocab = _vocabulary(cfg, text, workdir, path)
  tokens = np.frombuffer(raw, np.uint8).astype(np.int32) if text is None else vocab.encode(text)
  n_train = int(len(tokens) * cfg.train_fraction)
  return TextSource({'train': tokens[:n_train], 'validation': tokens[n_train:]}, vocab, cfg.block_size,
                    cfg.batch_size, cfg.eval_batch_size, cfg.eval_windows, seed)
