"""Offline TFDS preparation of MNIST and Fashion-MNIST from their IDX files (JAXLAB_DATA_DIR)."""

import gzip
import math
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


def test_runs_preparing_at_once_take_turns_and_only_the_first_prepares(tmp_path, monkeypatch):
  """Two preparers in flight together (a parallel sweep's first points): one prepares, the other waits, then reuses."""
  import threading
  import time

  calls, inside, most_inside, lock = [], [0], [0], threading.Lock()

  class SlowBuilder:
    def __init__(self, data_dir, file_format):
      self.data_dir = os.path.join(data_dir, 'fake', '1.0.0')

    def download_and_prepare(self, download_config):
      with lock:
        inside[0] += 1
        most_inside[0] = max(most_inside[0], inside[0])
      calls.append(threading.get_ident())
      time.sleep(0.3)
      os.makedirs(self.data_dir, exist_ok=True)
      with open(os.path.join(self.data_dir, 'dataset_info.json'), 'w') as f:
        f.write('{}')
      with lock:
        inside[0] -= 1

  monkeypatch.setattr(tfds_idx, '_builder_class', lambda name: SlowBuilder)
  monkeypatch.setattr(tfds_idx, 'check_raw_files', lambda data_dir, name: None)
  threads = [threading.Thread(target=tfds_idx.prepare, args=('mnist', str(tmp_path), str(tmp_path / 'tfds')))
             for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(calls) == 1 and most_inside[0] == 1


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


def _idx(magic, dims, data=None):
  """A gzip-compressed IDX file: `magic`, `dims`, then `data` (zeros filling `dims` unless given)."""
  header = b''.join(n.to_bytes(4, 'big') for n in (magic, *dims))
  return gzip.compress(header + (bytes(math.prod(dims)) if data is None else data))


def _cut(raw):
  return raw[:len(raw) // 2]


def _zero_crc(raw):
  return raw[:-8] + bytes(8)


@needs_data('mnist/t10k-labels-idx1-ubyte.gz')
@pytest.mark.parametrize('damage, message', [
    (_cut, ' is truncated: its gzip stream ends before its end marker'),
    (lambda raw: b'<html>Not Found</html>', " is not a gzip file: it starts with b'<h', not the gzip magic 1f 8b"),
    (lambda raw: b'', " is not a gzip file: it starts with b'', not the gzip magic 1f 8b"),
    (_zero_crc, ' is a damaged gzip file (CRC check failed 0x0 != 0x4ab9eff9)'),
], ids=['truncated', 'html', 'empty', 'bad-crc'])
def test_a_file_that_is_not_a_whole_gzip_stream_is_one_line_naming_it(tmp_path, damage, message):
  path = tmp_path / 't10k-labels-idx1-ubyte.gz'
  with open(os.path.join(DATA_DIR, 'mnist', path.name), 'rb') as f:
    path.write_bytes(damage(f.read()))
  with pytest.raises(DataError) as error:
    tfds_idx.read_idx(str(path))
  assert str(error.value) == f'{path}{message}'


@pytest.mark.parametrize('raw, message', [
    (_idx(2457, ()), ' is not an IDX label or image file (magic number 2457)'),
    (gzip.compress(b'\x00\x00\x08\x03\x00\x00\x27\x10'), ' ends inside its IDX header, after 8 bytes'),
    (gzip.compress(b'\x08\x01'), ' ends inside its IDX header, after 2 bytes'),
    (_idx(2049, (100,), bytes(50)), ' holds 50 bytes of data, but its IDX header says shape (100,) (100 bytes)'),
    (_idx(2049, (10,), bytes(50)), ' holds 50 bytes of data, but its IDX header says shape (10,) (10 bytes)'),
    (_idx(2051, (3, 28, 28), bytes(100)),
     ' holds 100 bytes of data, but its IDX header says shape (3, 28, 28) (2352 bytes)'),
    (_idx(2051, (2**32 - 1, 28, 28), bytes(10**6)),
     ' holds 1000000 bytes of data, but its IDX header says shape (4294967295, 28, 28) (3367254359280 bytes)'),
], ids=['bad-magic', 'cut-in-dims', 'cut-in-magic', 'too-little-data', 'too-much-data', 'images-short', 'huge'])
def test_an_idx_header_that_does_not_fit_the_data_is_one_line_naming_it(tmp_path, raw, message):
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  path.write_bytes(raw)
  with pytest.raises(DataError) as error:
    tfds_idx.read_idx(str(path))
  assert str(error.value) == f'{path}{message}'


@pytest.mark.parametrize('file, raw, message', [
    ('train-images-idx3-ubyte.gz', _idx(2049, (3,)), 'holds an array of shape (3,), not 28x28 images'),
    ('train-images-idx3-ubyte.gz', _idx(2051, (3, 32, 32)), 'holds an array of shape (3, 32, 32), not 28x28 images'),
    ('train-labels-idx1-ubyte.gz', _idx(2051, (3, 28, 28)), 'holds an array of shape (3, 28, 28), not labels'),
    ('train-labels-idx1-ubyte.gz', _idx(2049, (3,), bytes([1, 12, 2])), 'has label 12; the labels are 0..9'),
    ('train-labels-idx1-ubyte.gz', _idx(2049, (2,)),
     'has 3 images but {folder}/train-labels-idx1-ubyte.gz has 2 labels'),
    ('train-images-idx3-ubyte.gz', _cut(_idx(2051, (3, 28, 28), np.random.default_rng(0).bytes(3 * 28 * 28))),
     'is truncated: its gzip stream ends before its end marker'),
], ids=['labels-as-images', 'wrong-image-size', 'images-as-labels', 'label-out-of-range', 'count-mismatch',
        'truncated'])
def test_preparing_from_idx_files_that_do_not_fit_together_is_one_line_naming_the_file(tmp_path, file, raw, message):
  folder = tmp_path / 'raw' / 'mnist'
  folder.mkdir(parents=True)
  for images, labels in tfds_idx.IDX_FILES.values():
    (folder / images).write_bytes(_idx(2051, (3, 28, 28)))
    (folder / labels).write_bytes(_idx(2049, (3,)))
  (folder / file).write_bytes(raw)
  named = 'train-images-idx3-ubyte.gz' if message.startswith('has 3 images') else file
  with pytest.raises(DataError) as error:
    tfds_idx.prepare('mnist', str(tmp_path / 'raw'), str(tmp_path / 'tfds'))
  assert str(error.value) == f'{folder}/{named} ' + message.format(folder=folder)


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
