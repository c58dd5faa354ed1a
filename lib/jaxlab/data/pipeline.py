"""The image input pipeline: random-access records -> augmented, host-sharded batches via grain.

Every batch is a pure function of (seed, step): the rows of step s are a slice of a permutation
drawn from (seed, epoch of s), and each example's augmentation is drawn from a hash of (seed,
its position in the stream). A run resumed at step s therefore reads exactly the batches an
uninterrupted run would, with no iterator state beyond the step already in the TrainState. Each
process reads only its rows of every global batch. grain runs the per-batch work (reading,
augmenting) in threads and keeps `prefetch` batches ready ahead of the training step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Protocol, Sequence

import numpy as np

from jaxlab.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


class Records(Protocol):
  """Random-access examples: len() and a batched read of rows -> {'image': uint8 NHWC, 'label'}."""

  def __len__(self) -> int:
    ...

  def read(self, rows: np.ndarray) -> Batch:
    ...


@dataclasses.dataclass(frozen=True)
class ArrayRecords:
  """Records held in host memory (small datasets, stand-in data)."""

  arrays: Batch

  def __len__(self) -> int:
    return len(self.arrays['label'])

  def read(self, rows: np.ndarray) -> Batch:
    return {k: v[rows] for k, v in self.arrays.items()}


@dataclasses.dataclass(frozen=True)
class DataSourceRecords:
  """Records read on demand from a TFDS/grain random-access data source (e.g. array_record)."""

  source: Sequence[dict]

  def __len__(self) -> int:
    return len(self.source)

  def read(self, rows: np.ndarray) -> Batch:
    """Images of different sizes (ImageNet) come back as a list, for `sized` to crop and resize."""
    examples = self.source.__getitems__(rows.tolist())  # batched reads are ~4x faster than one by one
    images = [e['image'] for e in examples]
    same = len({im.shape for im in images}) == 1
    return {'image': np.stack(images) if same else images, 'label': np.stack([e['label'] for e in examples])}


@dataclasses.dataclass(frozen=True)
class RowRange:
  """Rows [start, stop) of other records: a validation split carved from the end of train."""

  records: Records
  start: int
  stop: int

  def __len__(self) -> int:
    return self.stop - self.start

  def read(self, rows: np.ndarray) -> Batch:
    return self.records.read(rows + self.start)


@dataclasses.dataclass(frozen=True)
class RowSubset:
  """Chosen rows of other records, in the given order: a cross-validation fold (folds.py)."""

  records: Records
  rows: np.ndarray

  def __len__(self) -> int:
    return len(self.rows)

  def read(self, rows: np.ndarray) -> Batch:
    return self.records.read(self.rows[rows])


def carve_validation(train: Records, size: int) -> tuple[Records, Records]:
  """(train without its last `size` rows, those rows): validation never touches the test set."""
  n = len(train)
  if not 0 <= size < n:
    raise ConfigError(f'data.validation_size {size} must be in [0, {n}) for a training split of {n} examples')
  return RowRange(train, 0, n - size), RowRange(train, n - size, n)


@dataclasses.dataclass(frozen=True)
class Augment:
  """Host-side augmentation and normalisation; all off by default except scaling to [0, 1]."""

  crop_padding: int = 0  # random crop of the original size from the zero-padded image
  flip: bool = False  # random horizontal flip with probability 1/2
  image_size: int = 0  # >0: every image becomes a square of this size (see `sized`), for variable-size datasets
  mean: tuple[float, ...] = (0.0,)  # per channel, on the [0, 1] scale
  std: tuple[float, ...] = (1.0,)
  binarize: bool = False  # each pixel on with probability its intensity (before normalising)


_LATEST_ORDER: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
# Mixed into the seed of every epoch order, so no other use of (seed, epoch) as numpy entropy
# draws the same numbers; SeedSequence([seed, epoch]) never equals that of [seed', epoch'] either.
EPOCH_ORDER_DOMAIN = 0x6A61786C  # 'jaxl'


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n training rows in `epoch`.

  Consecutive steps share it, so the latest epoch's order is kept per (seed, n): one entry per
  seed, also for the vmapped seeds of num_replicas, which an LRU of a few entries would thrash.
  """
  latest = _LATEST_ORDER.get((seed, n))
  if latest is None or latest[0] != epoch:
    latest = (epoch, np.random.default_rng([EPOCH_ORDER_DOMAIN, seed, epoch]).permutation(n))
    _LATEST_ORDER[(seed, n)] = latest
  return latest[1]


def global_rows(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """The training rows of the global batch of `step`; an epoch drops its last partial batch."""
  epoch, position = divmod(step, n // batch_size)
  return epoch_permutation(seed, epoch, n)[position * batch_size:(position + 1) * batch_size]


def host_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that process `process_index` of `process_count` loads."""
  if batch_size % process_count:
    raise ConfigError(f'batch size {batch_size} is not divisible by {process_count} processes')
  per_host = batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def check_batch_sizes(num_train: int, batch_size: int, eval_batch_size: int, process_count: int) -> None:
  """A source's batch sizes fit its training split and split evenly over the processes."""
  if batch_size > num_train:
    raise ConfigError(f'data.batch_size {batch_size} exceeds the {num_train} training examples')
  for size, what in ((batch_size, 'batch_size'), (eval_batch_size, 'eval_batch_size')):
    if size % process_count:
      raise ConfigError(f'data.{what} {size} is not divisible by {process_count} processes')


def eval_rows(index: int, eval_batch_size: int, n: int, process_index: int,
              process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """This host's rows of the `index`-th evaluation batch of an n-row split, and the float mask of
  the real ones: the last batch is padded with row 0, masked out."""
  rows = np.arange(index * eval_batch_size, (index + 1) * eval_batch_size)
  rows = rows[host_slice(eval_batch_size, process_index, process_count)]
  mask = rows < n
  return np.where(mask, rows, 0), mask.astype(np.float32)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """A counter-based hash: independent-looking uint64s from consecutive integers."""
  with np.errstate(over='ignore'):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def example_keys(seed: int, positions: np.ndarray) -> np.ndarray:
  """One random uint64 per example from (seed, its position in the training stream)."""
  with np.errstate(over='ignore'):
    return _splitmix64(_splitmix64(np.full(positions.shape, seed, np.uint64)) ^ positions.astype(np.uint64))


def random_crop(images: np.ndarray, keys: np.ndarray, padding: int) -> np.ndarray:
  """Each NHWC image cropped back to its size at an offset in [0, 2*padding]^2 from its key."""
  if padding <= 0:
    return images
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  span = np.uint64(2 * padding + 1)
  dy = (keys % span).astype(int)
  dx = ((keys >> np.uint64(16)) % span).astype(int)
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of one HWC uint8 image (PIL: no TensorFlow on the host)."""
  from PIL import Image
  channels = image.shape[-1]
  resized = Image.fromarray(image[..., 0] if channels == 1 else image).resize((width, height), Image.BILINEAR)
  return np.asarray(resized).reshape(height, width, channels)


def random_resized_crop(image: np.ndarray, key: np.uint64, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style training crop of one HWC image, drawn from its key, resized to size x size.

  A box of `scale` times the image's area and aspect ratio in `ratio` (log-uniform); after 10
  boxes that do not fit, the central square.
  """
  h, w = image.shape[:2]
  rng = np.random.default_rng(int(key))
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(image[top:top + ch, left:left + cw], size, size)
  side = min(h, w)
  return _resize(image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side], size, size)


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation view of one HWC image: shorter side resized to size / crop_fraction, central size x size."""
  h, w = image.shape[:2]
  short = int(round(size / crop_fraction))
  nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
  resized = _resize(image, nh, nw)
  top, left = (nh - size) // 2, (nw - size) // 2
  return resized[top:top + size, left:left + size]


def random_flip(images: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """Each NHWC image mirrored left-right when bit 32 of its key is set."""
  flip = ((keys >> np.uint64(32)) & np.uint64(1)).astype(bool)
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


# Mixed into every example key before binarizing, so its pixel draws are not the crop/flip bits.
BINARIZE_DOMAIN = np.uint64(0xB1A2B3C4D5E6F708)
BINARIZE_TEST_SEED = 0  # evaluation splits are binarized once, the same in every run


def binarize(images: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """uint8 images -> 0 / 255, each pixel 255 with probability intensity / 255, drawn from (its example's key,
  its position in the image): the stochastic binarization of MNIST used for VAEs."""
  pixels = np.arange(np.prod(images.shape[1:]), dtype=np.uint64)
  with np.errstate(over='ignore'):
    bits = _splitmix64(_splitmix64(keys ^ BINARIZE_DOMAIN)[:, None] ^ pixels)
  uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
  on = uniform < images.reshape(len(images), -1) / 255.0
  return np.where(on, 255, 0).astype(np.uint8).reshape(images.shape)


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 -> float32 on [0, 1], then (x - mean) / std per channel."""
  x = images.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclasses.dataclass
class GrainSource:
  """Image splits served with the data-source interface of train.py (see ArraySource)."""

  splits: dict[str, Records]
  batch_size: int
  eval_batch_size: int
  seed: int
  num_classes: int
  augment: Augment = Augment()
  num_threads: int = 2
  prefetch: int = 4
  process_index: int = 0  # this host and the number of hosts; vision.load fills them from jax
  process_count: int = 1

  def __post_init__(self):
    if 'train' not in self.splits:
      raise DataError('data source has no train split')
    check_batch_sizes(len(self.splits['train']), self.batch_size, self.eval_batch_size, self.process_count)

  @property
  def eval_splits(self) -> list[str]:
    return [name for name in self.splits if name != 'train']

  def example_batch(self) -> Batch:
    """One normalised training example with a batch dimension, for initialising models."""
    raw = self.splits['train'].read(np.zeros(1, int))
    return {'x': normalise(self.sized(raw['image']), self.augment.mean, self.augment.std),
            'y': raw['label'].astype(np.int32)}

  def sized(self, images: np.ndarray | list[np.ndarray], keys: np.ndarray | None = None) -> np.ndarray:
    """With `augment.image_size`, every image as a square of that size: a random resized crop from
    its key in training, the central crop otherwise; without it the images as read."""
    size = self.augment.image_size
    if not size:
      if isinstance(images, list):
        raise DataError(f'images of different sizes {sorted({im.shape for im in images})[:3]}: '
                        'set data.image_size to crop and resize them to one size')
      return images
    if keys is None:
      return np.stack([center_crop(im, size) for im in images])
    return np.stack([random_resized_crop(im, k, size) for im, k in zip(images, keys)])

  def train_batch(self, step: int) -> Batch:
    """This host's rows of the global training batch of `step`, augmented."""
    part = host_slice(self.batch_size, self.process_index, self.process_count)
    rows = global_rows(self.seed, step, self.batch_size, len(self.splits['train']))[part]
    raw = self.splits['train'].read(rows)
    keys = example_keys(self.seed, step * self.batch_size + np.arange(self.batch_size)[part])
    images = random_crop(self.sized(raw['image'], keys), keys, self.augment.crop_padding)
    if self.augment.flip:
      images = random_flip(images, keys)
    if self.augment.binarize:
      images = binarize(images, keys)
    return {'x': normalise(images, self.augment.mean, self.augment.std), 'y': raw['label'].astype(np.int32)}

  def eval_batch(self, split: str, index: int) -> Batch:
    """This host's rows of the `index`-th evaluation batch, padded; 'mask' marks real examples and 'index'
    holds each one's row in the split (a key for per-example randomness that no batching changes)."""
    records = self.splits[split]
    rows, mask = eval_rows(index, self.eval_batch_size, len(records), self.process_index, self.process_count)
    raw = records.read(rows)
    images = self.sized(raw['image'])
    if self.augment.binarize:
      images = binarize(images, example_keys(BINARIZE_TEST_SEED, rows))
    return {'x': normalise(images, self.augment.mean, self.augment.std), 'y': raw['label'].astype(np.int32),
            'mask': mask, 'index': rows.astype(np.int32)}

  def _threaded(self, dataset) -> Iterator[Batch]:
    import grain
    options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
    return iter(dataset.to_iter_dataset(options))

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    import grain
    # Unbounded in practice: the loop stops by step count, never by exhausting this range.
    return self._threaded(grain.MapDataset.range(start_step, 2**62).map(self.train_batch))

  def eval_batches(self, split: str) -> Iterator[Batch]:
    import grain
    num_batches = -(-len(self.splits[split]) // self.eval_batch_size)
    return self._threaded(grain.MapDataset.range(num_batches).map(functools.partial(self.eval_batch, split)))
