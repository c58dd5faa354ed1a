"""Offline TFDS preparation of MNIST and Fashion-MNIST from their IDX files (JAXLAB_DATA_DIR)."""

import gzip
import os
import socket

import numpy as np
import pytest
from conftest import DATA_DIR, needs_data

from jaxlab.data import tfds_idx, vision
from jaxlab.errors import DataError

needs_idx_files = needs_data(*tfds_idx.NAMES)

# From /work/shared/data/README.md.
FIRST_LABELS = {'mnist': {'train': [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], 'test': [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]},
                'fashion_mnist': {'train': [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], 'test': [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]}}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@needs_idx_files
@pytest.mark.parametrize('name', tfds_idx.NAMES)
def test_prepared_dataset_has_the_published_counts_shapes_and_labels(name, tfds_dir):
  builder = tfds_idx.prepare(name, DATA_DIR, tfds_dir)
  for split, n in (('train', 60000), ('test', 10000)):
    source = builder.as_data_source(split)
    assert len(source) == n
    first = source[0]
    assert first['image'].shape == (28, 28, 1) and first['image'].dtype == np.uint8
    assert [int(source[i]['label']) for i in range(10)] == FIRST_LABELS[name][split]
  labels = np.array([e['label'] for e in builder.as_data_source('train').__getitems__(list(range(60000)))])
  assert labels.min() == 0 and labels.max() == 9
  expected = MNIST_TRAIN_COUNTS if name == 'mnist' else [6000] * 10
  assert np.bincount(labels).tolist() == expected


@needs_idx_files
def test_prepared_images_equal_the_idx_pixels(tfds_dir):
  builder = tfds_idx.prepare('mnist', DATA_DIR, tfds_dir)
  raw = tfds_idx.read_idx(os.path.join(DATA_DIR, 'mnist', 't10k-images-idx3-ubyte.gz'))
  source = builder.as_data_source('test')
  for i in (0, 1234, 9999):
    np.testing.assert_array_equal(source[i]['image'][..., 0], raw[i])
  assert abs(raw.mean() - 33.79) < 0.01  # the README's test-set mean


def _file_states(folder: str) -> dict[str, tuple[int, int, int]]:
  """Every file under `folder` -> (inode, mtime_ns, size): any rewrite of a file changes its entry."""
  states = {}
  for parent, _, files in os.walk(folder):
    for name in files:
      st = os.stat(os.path.join(parent, name))
      states[os.path.join(parent, name)] = (st.st_ino, st.st_mtime_ns, st.st_size)
  return states


@needs_idx_files
def test_second_prepare_reuses_the_cache_without_the_raw_files(tfds_dir):
  tfds_idx.prepare('mnist', DATA_DIR, tfds_dir)
  before = _file_states(tfds_dir)
  builder = tfds_idx.prepare('mnist', '/nonexistent', tfds_dir)
  assert _file_states(tfds_dir) == before  # nothing rebuilt or rewritten
  assert len(builder.as_data_source('test')) == 10000


def test_missing_files_give_one_error_naming_paths_and_source(tmp_path, monkeypatch):
  connections = []
  def refuse(sock, address):
    connections.append(address)
    raise OSError('network disabled by the test')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  with pytest.raises(DataError) as info:
    tfds_idx.prepare('fashion_mnist', str(tmp_path / 'raw'), str(tmp_path / 'tfds'))
  message = str(info.value)
  assert os.path.join(str(tmp_path / 'raw'), 'fashion_mnist', 't10k-labels-idx1-ubyte.gz') in message
  assert 'zalandoresearch/fashion-mnist' in message and 'JAXLAB_DATA_DIR' in message
  assert '\n' not in message
  # Refused before any download attempt or preparation began.
  assert connections == [] and not (tmp_path / 'tfds').exists()


def test_missing_data_dir_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.delenv('JAXLAB_DATA_DIR', raising=False)
  cfg = vision.data_config('mnist', tfds_data_dir=str(tmp_path))
  with pytest.raises(DataError, match='set data.data_dir or JAXLAB_DATA_DIR'):
    vision.load(cfg, seed=0)


def test_unprepared_catalogue_dataset_is_a_clear_error(tmp_path):
  cfg = vision.data_config('cifar10', tfds_data_dir=str(tmp_path))
  with pytest.raises(DataError, match=r"TFDS dataset 'cifar10' .* not prepared as array_record"):
    vision.load(cfg, seed=0)


def test_bad_idx_file_is_rejected(tmp_path):
  path = tmp_path / 'bad.gz'
  with gzip.open(path, 'wb') as f:
    f.write(b'\x00\x00\x08\x05' + b'\x00' * 16)
  with pytest.raises(DataError, match='not an IDX'):
    tfds_idx.read_idx(str(path))


@needs_idx_files
@pytest.mark.parametrize('in_memory', [True, False])
def test_source_serves_normalised_batches_from_tfds(tfds_dir, in_memory):
  cfg = vision.data_config('mnist', data_dir=DATA_DIR, tfds_data_dir=tfds_dir, in_memory=in_memory,
                           batch_size=32, eval_batch_size=3000, mean=(0.5,), std=(0.25,), validation_size=5000)
  source = vision.load(cfg, seed=0)
  assert source.num_classes == 10 and source.eval_splits == ['test', 'validation']
  batch = next(source.train_batches(0))
  assert batch['x'].shape == (32, 28, 28, 1) and batch['x'].dtype == np.float32
  assert batch['x'].min() == pytest.approx(-2.0) and batch['x'].max() <= 2.0 + 1e-6
  test = list(source.eval_batches('test'))
  assert len(test) == 4 and test[-1]['mask'].sum() == 1000
  assert test[0]['y'][:10].tolist() == FIRST_LABELS['mnist']['test']
  assert sum(b['mask'].sum() for b in source.eval_batches('validation')) == 5000
