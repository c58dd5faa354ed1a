"""MNIST and Fashion-MNIST as TFDS datasets, prepared offline from their original IDX files.

The builders write array_record files with raw uint8 `tfds.features.Tensor` images (no PNG
encoding: decoding PNGs runs at only ~2-3k examples/s here) and are read back with
`builder.as_data_source`, so neither preparing nor reading imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import math
import os
import zlib

import numpy as np

from jaxlab.errors import DataError, first_line

IDX_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
             'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
WHERE_TO_GET = {
    'mnist': 'http://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)',
    'fashion_mnist': 'https://github.com/zalandoresearch/fashion-mnist (folder data/fashion/)',
}
NAMES = tuple(WHERE_TO_GET)
NUM_CLASSES = 10
_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3
_GZIP_MAGIC = b'\x1f\x8b'


def read_idx(path: str) -> np.ndarray:
  """The uint8 array in a gzip-compressed IDX file (big-endian header, then row-major data)."""
  with open(path, 'rb') as f:
    start = f.read(2)
  if start != _GZIP_MAGIC:
    raise DataError(f'{path} is not a gzip file: it starts with {start!r}, not the gzip magic 1f 8b')
  try:
    with gzip.open(path, 'rb') as f:
      header = f.read(4)
      magic = int.from_bytes(header, 'big')
      if len(header) == 4 and magic not in _IDX_MAGIC:
        raise DataError(f'{path} is not an IDX label or image file (magic number {magic})')
      header += f.read(4 * _IDX_MAGIC.get(magic, 0))
      if len(header) < 4 + 4 * _IDX_MAGIC.get(magic, 0):
        raise DataError(f'{path} ends inside its IDX header, after {len(header)} bytes')
      dims = tuple(int.from_bytes(header[i:i + 4], 'big') for i in range(4, len(header), 4))
      size, data, extra = math.prod(dims), bytearray(), 0
      # In chunks, keeping at most `size` bytes: neither a header that lies nor a gzip bomb costs memory.
      for chunk in iter(lambda: f.read(1 << 20), b''):
        kept = chunk[:size - len(data)]
        data += kept
        extra += len(chunk) - len(kept)
  except EOFError:
    raise DataError(f'{path} is truncated: its gzip stream ends before its end marker') from None
  except (OSError, zlib.error) as e:
    raise DataError(f'{path} is a damaged gzip file ({first_line(e)})') from None
  if len(data) + extra != size:
    raise DataError(f'{path} holds {len(data) + extra} bytes of data, but its IDX header says shape {dims} '
                    f'({size} bytes)')
  return np.frombuffer(data, np.uint8).reshape(dims)


def read_examples(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """The (n, 28, 28) images and (n,) labels of one split, checked to belong together."""
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.shape[1:] != (28, 28):
    raise DataError(f'{images_path} holds an array of shape {images.shape}, not 28x28 images')
  if labels.ndim != 1:
    raise DataError(f'{labels_path} holds an array of shape {labels.shape}, not labels')
  if len(images) != len(labels):
    raise DataError(f'{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels')
  if len(labels) and labels.max() >= NUM_CLASSES:
    raise DataError(f'{labels_path} has label {labels.max()}; the labels are 0..{NUM_CLASSES - 1}')
  return images, labels


def raw_dir(data_dir: str, name: str) -> str:
  """Where the IDX files of `name` are expected: <data_dir>/<name>/."""
  return os.path.join(data_dir, name)


def check_raw_files(data_dir: str, name: str) -> None:
  """Raises one DataError naming every missing IDX file and where to get them."""
  folder = raw_dir(data_dir, name)
  missing = [os.path.join(folder, f) for files in IDX_FILES.values() for f in files
             if not os.path.isfile(os.path.join(folder, f))]
  if missing:
    raise DataError(f'{name}: missing {", ".join(missing)}. Download the four IDX .gz files from '
                    f'{WHERE_TO_GET[name]} into {folder} (set it with data.data_dir or JAXLAB_DATA_DIR).')


def _builder_class(name: str):
  import tensorflow_datasets as tfds

  class IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`name` from its four IDX files in the manual dir; splits train and test in file order."""

    VERSION = tfds.core.Version('1.0.0')
    MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put the four IDX .gz files from {WHERE_TO_GET[name]} in the manual dir.'

    def _info(self):
      features = tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES)})
      # disable_shuffling keeps the files' order, so example i is the i-th image of the IDX file.
      return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=('image', 'label'),
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      folder = str(dl_manager.manual_dir)
      return {split: self._generate_examples(os.path.join(folder, images), os.path.join(folder, labels))
              for split, (images, labels) in IDX_FILES.items()}

    def _generate_examples(self, images_path, labels_path):
      images, labels = read_examples(images_path, labels_path)
      for i in range(len(labels)):
        yield i, {'image': images[i][..., None], 'label': int(labels[i])}

  IdxBuilder.name = f'{name}_idx'  # not 'mnist': TFDS's own builder (PNG images) keeps that name
  return IdxBuilder


def default_tfds_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def prepare(name: str, data_dir: str, tfds_dir: str):
  """The TFDS builder of `name`, prepared into `tfds_dir` from the IDX files in `data_dir` once.

  Runs that start together (a parallel sweep) take turns on a lock file: the first prepares, the rest
  find the prepared dataset (TFDS alone would let both prepare and the second fail renaming its copy).
  """
  if name not in NAMES:
    raise DataError(f'no offline TFDS builder for {name!r}; offline datasets: {", ".join(NAMES)}')
  import tensorflow_datasets as tfds
  builder = _builder_class(name)(data_dir=tfds_dir, file_format='array_record')
  if os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    return builder
  check_raw_files(data_dir, name)
  tfds.disable_progress_bar()
  try:
    os.makedirs(tfds_dir, exist_ok=True)
  except OSError as e:
    raise DataError(f'cannot prepare {name} into {tfds_dir}: {e.strerror}; set data.tfds_data_dir or '
                    'TFDS_DATA_DIR to a writable directory') from None
  with _held(os.path.join(tfds_dir, f'.{name}_idx.prepare.lock')):
    if not os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir(data_dir, name)))
  return builder


@contextlib.contextmanager
def _held(path: str):
  """An exclusive flock on `path`, waited for; the kernel releases it if the process dies."""
  with open(path, 'a') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
