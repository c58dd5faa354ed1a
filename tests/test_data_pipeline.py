"""The grain image pipeline: determinism from the seed, exact resume, host shards, augmentation."""

import itertools

import numpy as np
import pytest

from jaxlab.data import pipeline
from jaxlab.errors import ConfigError


def _records(n=103, shape=(8, 8, 3)):
  images = np.arange(n * np.prod(shape), dtype=np.int64).reshape(n, *shape) % 251
  return pipeline.ArrayRecords({'image': images.astype(np.uint8), 'label': np.arange(n) % 10})


def _source(process_index=0, process_count=1, seed=3, **augment):
  return pipeline.GrainSource({'train': _records(), 'test': _records(25)}, batch_size=10, eval_batch_size=8,
                              seed=seed, num_classes=10, augment=pipeline.Augment(**augment),
                              process_index=process_index, process_count=process_count)


def _take(source, start, n):
  return list(itertools.islice(source.train_batches(start), n))


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_same_seed_same_batches_other_seed_other_batches():
  a, b = _take(_source(), 0, 3), _take(_source(), 0, 3)
  for x, y in zip(a, b):
    _equal(x, y)
  assert not np.array_equal(a[0]['y'], _take(_source(seed=4), 0, 1)[0]['y'])


def test_every_epoch_visits_each_row_at_most_once_and_reshuffles():
  # 103 rows, batch 10: 10 steps per epoch, the last 3 rows of each permutation dropped.
  rows = [pipeline.global_rows(3, s, 10, 103) for s in range(20)]
  first, second = np.concatenate(rows[:10]), np.concatenate(rows[10:])
  assert len(set(first)) == 100 and len(set(second)) == 100
  assert not np.array_equal(first, second)


@pytest.mark.parametrize('augment', [{}, {'crop_padding': 2, 'flip': True}])
def test_resuming_mid_epoch_gives_the_uninterrupted_batches(augment):
  straight = _take(_source(**augment), 0, 25)  # crosses two epoch boundaries
  resumed = _take(_source(**augment), 13, 12)
  for x, y in zip(straight[13:], resumed, strict=True):
    _equal(x, y)


def test_two_hosts_read_disjoint_rows_that_make_up_the_global_batch():
  one = _take(_source(crop_padding=2, flip=True), 0, 12)
  hosts = [_take(_source(p, 2, crop_padding=2, flip=True), 0, 12) for p in range(2)]
  for step in range(12):
    rows = [pipeline.global_rows(3, step, 10, 103)[pipeline.host_slice(10, p, 2)] for p in range(2)]
    assert not set(rows[0]) & set(rows[1])
    assert hosts[0][step]['x'].shape[0] == hosts[1][step]['x'].shape[0] == 5
    # Per-example randomness depends on the example's stream position, not on the host count.
    _equal({k: np.concatenate([h[step][k] for h in hosts]) for k in ('x', 'y')}, one[step])


def test_host_slicing_rejects_uneven_batches():
  with pytest.raises(ConfigError, match='not divisible by 3 processes'):
    _source(0, 3)


def test_random_crop_shifts_within_the_padding_and_flip_mirrors():
  images = np.random.default_rng(0).integers(1, 256, (64, 6, 6, 1)).astype(np.uint8)
  keys = pipeline.example_keys(0, np.arange(64))
  cropped = pipeline.random_crop(images, keys, 2)
  shifts = set()
  for img, out in zip(images, cropped):
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    found = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(padded[dy:dy + 6, dx:dx + 6], out)]
    assert found
    shifts.add(found[0])
  assert len(shifts) > 10  # offsets really vary across examples
  flipped = pipeline.random_flip(images, keys)
  mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
  kept = [np.array_equal(f, i) for f, i in zip(flipped, images)]
  assert all(m or k for m, k in zip(mirrored, kept)) and 16 < sum(mirrored) < 48


def test_normalisation_per_channel():
  images = np.full((1, 2, 2, 3), 255, np.uint8)
  out = pipeline.normalise(images, (0.5, 0.0, 1.0), (0.5, 2.0, 1.0))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.5, 0.0])


def test_augmentation_only_in_training_batches():
  plain, augmented = _source(), _source(crop_padding=2, flip=True)
  _equal(next(plain.eval_batches('test')), next(augmented.eval_batches('test')))
  assert not np.array_equal(_take(plain, 0, 1)[0]['x'], _take(augmented, 0, 1)[0]['x'])


def test_eval_batches_cover_the_split_once_with_padding_masked():
  batches = list(_source().eval_batches('test'))
  assert [b['mask'].sum() for b in batches] == [8, 8, 8, 1]
  labels = np.concatenate([b['y'][b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(25) % 10)


def test_validation_is_carved_from_the_end_of_train():
  train, validation = pipeline.carve_validation(_records(), 3)
  assert len(train) == 100 and len(validation) == 3
  np.testing.assert_array_equal(validation.read(np.arange(3))['label'], np.array([100, 101, 102]) % 10)
  with pytest.raises(ConfigError, match='validation_size 103'):
    pipeline.carve_validation(_records(), 103)


class _VariableSizeSource:
  """A random-access source like TFDS's decoded imagenet2012: images of different sizes."""

  def __init__(self, n=30):
    rng = np.random.default_rng(0)
    self.examples = [{'image': rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3),
                                            dtype=np.uint8), 'label': np.int64(i % 10)} for i in range(n)]

  def __len__(self):
    return len(self.examples)

  def __getitems__(self, rows):
    return [self.examples[r] for r in rows]


def _variable_source(**augment):
  records = pipeline.DataSourceRecords(_VariableSizeSource())
  return pipeline.GrainSource({'train': records, 'test': pipeline.DataSourceRecords(_VariableSizeSource(12))},
                              batch_size=6, eval_batch_size=8, seed=1, num_classes=10,
                              augment=pipeline.Augment(**augment))


def test_variable_size_images_are_cropped_to_one_size_deterministically():
  source = _variable_source(image_size=16, flip=True)
  first, again = _take(source, 3, 2), _take(source, 3, 2)
  for a, b in zip(first, again):
    _equal(a, b)
  assert first[0]['x'].shape == (6, 16, 16, 3) and source.example_batch()['x'].shape == (1, 16, 16, 3)
  evals = list(source.eval_batches('test'))
  assert [b['x'].shape for b in evals] == [(8, 16, 16, 3)] * 2 and evals[1]['mask'].sum() == 4
  with pytest.raises(pipeline.DataError, match='set data.image_size'):
    _take(_variable_source(), 0, 1)


def test_random_resized_crop_varies_with_the_key_and_center_crop_keeps_the_middle():
  image = np.zeros((40, 80, 1), np.uint8)
  image[:, 20:60] = 255  # the central 40x40 square is white, the sides black
  middle = pipeline.center_crop(image, 16, crop_fraction=1.0)
  assert middle.shape == (16, 16, 1) and middle.min() > 200  # white, up to the resize blending its edges
  crops = [pipeline.random_resized_crop(image, np.uint64(k), 16) for k in range(5)]
  assert all(c.shape == (16, 16, 1) for c in crops)
  assert len({c.tobytes() for c in crops}) == 5  # five keys, five different boxes
  np.testing.assert_array_equal(crops[2], pipeline.random_resized_crop(image, np.uint64(2), 16))


def test_epoch_orders_of_different_seeds_and_epochs_never_coincide():
  """Seeding with seed + epoch would make seed 0's epoch 1 seed 1's epoch 0 (shifted shared orders)."""
  orders = {(seed, epoch): pipeline.epoch_permutation(seed, epoch, 50).tobytes()
            for seed in range(8) for epoch in range(8)}
  assert len(set(orders.values())) == len(orders)
  # Nor do they coincide with numpy's plain generator for the same numbers (the orders are namespaced).
  assert orders[(0, 1)] != np.random.default_rng([0, 1]).permutation(50).tobytes()
