"""MNIST and Fashion-MNIST as TFDS datasets, prepared offline from their original IDX files.

The builders write array_record files with raw uint8 `tfds.features.Tensor` images (no PNG
encoding: decoding PNGs runs at only ~2-3k examples/s here) and are read back with
`builder.as_data_source`, so neither preparing nor reading imports TensorFlow.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from jaxlab.errors import DataError

IDX_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
             'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
WHERE_TO_GET = {
    'mnist': 'http://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)',
    'fashion_mnist': 'https://github.com/zalandoresearch/fashion-mnist (folder data/fashion/)',
}
NAMES = tuple(WHERE_TO_GET)
NUM_CLASSES = 10
_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3


def read_idx(path: str) -> np.ndarray:
  """The uint8 array in a gzip-compressed IDX file (big-endian header, then row-major data)."""
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  magic = int.from_bytes(raw[:4], 'big')
  if magic not in _IDX_MAGIC:
    raise DataError(f'{path} is not an IDX label or image file (magic number {magic})')
  dims = np.frombuffer(raw, '>u4', _IDX_MAGIC[magic], 4).astype(int)
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims))
  if data.size != np.prod(dims):
    raise DataError(f'{path} holds {data.size} bytes of data, its header says {tuple(dims)}')
  return data.reshape(dims)


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
      images, labels = read_idx(images_path), read_idx(labels_path)
      if len(images) != len(labels):
        raise DataError(f'{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels')
      for i in range(len(labels)):
        yield i, {'image': images[i][..., None], 'label': int(labels[i])}

  IdxBuilder.name = f'{name}_idx'  # not 'mnist': TFDS's own builder (PNG images) keeps that name
  return IdxBuilder


def default_tfds_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def prepare(name: str, data_dir: str, tfds_dir: str):
  """The TFDS builder of `name`, prepared into `tfds_dir` from the IDX files in `data_dir` once."""
  if name not in NAMES:
    raise DataError(f'no offline TFDS builder for {name!r}; offline datasets: {", ".join(NAMES)}')
  import tensorflow_datasets as tfds
  builder = _builder_class(name)(data_dir=tfds_dir, file_format='array_record')
  if not os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')):
    check_raw_files(data_dir, name)
    tfds.disable_progress_bar()
    try:
      os.makedirs(tfds_dir, exist_ok=True)
    except OSError as e:
      raise DataError(f'cannot prepare {name} into {tfds_dir}: {e.strerror}; set data.tfds_data_dir or '
                      'TFDS_DATA_DIR to a writable directory') from None
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir(data_dir, name)))
  return builder
