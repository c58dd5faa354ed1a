"""Image classification datasets: TFDS (prepared offline where needed) or stand-in data, served by grain.

`data.name='tfds'` reads `data.tfds_name` from `data.tfds_data_dir` (default TFDS_DATA_DIR, then
~/tensorflow_datasets). MNIST and Fashion-MNIST are first prepared there from their IDX files in
`data.data_dir` (default JAXLAB_DATA_DIR); other names must already be prepared as array_record.
`data.name='standin'` generates random images of the dataset's shape for tests: never results.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from jaxlab import parallel
from jaxlab.data import folds, pipeline, tfds_idx
from jaxlab.errors import DataError

# (image shape, number of classes) of the datasets that have configs; stand-in data copies them.
SHAPES = {'mnist': ((28, 28, 1), 10), 'fashion_mnist': ((28, 28, 1), 10), 'cifar10': ((32, 32, 3), 10),
          'cifar100': ((32, 32, 3), 100), 'imagenet2012': ((224, 224, 3), 1000)}


def _tfds_dir(cfg: ml_collections.ConfigDict) -> str:
  return cfg.tfds_data_dir or tfds_idx.default_tfds_dir()


def _data_dir(cfg: ml_collections.ConfigDict) -> str:
  data_dir = cfg.data_dir or os.environ.get('JAXLAB_DATA_DIR', '')
  if not data_dir:
    raise DataError(f'{cfg.tfds_name}: no data dir to prepare it from; set data.data_dir or JAXLAB_DATA_DIR to '
                    f'the folder holding {cfg.tfds_name}/ with its IDX files')
  return data_dir


def tfds_records(cfg: ml_collections.ConfigDict) -> tuple[dict[str, pipeline.Records], int]:
  """{'train': ..., 'test': ...} records of `cfg.tfds_name` and its number of classes."""
  if cfg.tfds_name in tfds_idx.NAMES:
    # Process 0 prepares first, so processes that share the directory never write it at once.
    if jax.process_index() == 0:
      tfds_idx.prepare(cfg.tfds_name, _data_dir(cfg), _tfds_dir(cfg))
    parallel.barrier('jaxlab_tfds_prepare')
    builder = tfds_idx.prepare(cfg.tfds_name, _data_dir(cfg), _tfds_dir(cfg))
    sources = {'train': builder.as_data_source('train'), 'test': builder.as_data_source(cfg.test_split)}
  else:
    import tensorflow_datasets as tfds
    try:
      builder = tfds.builder(cfg.tfds_name, data_dir=_tfds_dir(cfg))
      sources = {'train': builder.as_data_source('train'), 'test': builder.as_data_source(cfg.test_split)}
    except Exception as e:  # TFDS raises several types for "not there"; all mean the same here
      raise DataError(f'TFDS dataset {cfg.tfds_name!r} (split train/{cfg.test_split}) is not prepared as '
                      f'array_record in {_tfds_dir(cfg)}: {type(e).__name__}: {str(e).splitlines()[0]}. '
                      'Prepare it on a machine with internet access (tfds build --file_format=array_record) '
                      'and point data.tfds_data_dir or TFDS_DATA_DIR at it.') from None
  num_classes = builder.info.features['label'].num_classes
  records = {split: pipeline.DataSourceRecords(source) for split, source in sources.items()}
  if cfg.in_memory:  # small datasets: one batched read, then every batch is a numpy gather
    records = {split: pipeline.ArrayRecords(r.read(np.arange(len(r)))) for split, r in records.items()}
  return records, num_classes


def standin_records(name: str, batch_size: int, eval_batch_size: int, seed: int) -> tuple[dict, int]:
  """Random uint8 images and labels of dataset `name`'s shape: 2 training batches, 1.5 eval batches."""
  if name not in SHAPES:
    raise DataError(f'no stand-in shape for {name!r}; known: {", ".join(sorted(SHAPES))}')
  shape, num_classes = SHAPES[name]
  rng = np.random.default_rng(seed)

  def make(n: int) -> pipeline.ArrayRecords:
    return pipeline.ArrayRecords({'image': rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                                  'label': rng.integers(0, num_classes, n).astype(np.int64)})
  return {'train': make(2 * batch_size), 'test': make(eval_batch_size + eval_batch_size // 2)}, num_classes


def load(cfg: ml_collections.ConfigDict, seed: int) -> pipeline.GrainSource:
  """The grain source for a `data` block with name 'tfds' or 'standin'."""
  if cfg.name == 'standin':
    records, num_classes = standin_records(cfg.tfds_name, cfg.batch_size, cfg.eval_batch_size, seed)
  else:
    records, num_classes = tfds_records(cfg)
  if cfg.get('folds', 0):
    train = records['train']
    folds.check(cfg, len(train))
    train_rows, validation_rows = folds.rows(train.read(np.arange(len(train)))['label'], cfg.folds, cfg.fold)
    records['train'], records['validation'] = pipeline.RowSubset(train, train_rows), pipeline.RowSubset(train, validation_rows)
  elif cfg.validation_size:
    records['train'], records['validation'] = pipeline.carve_validation(records['train'], cfg.validation_size)
  if cfg.get("train_fraction", 1.0) != 1:  # fewer labels: a stratified part of what is left for training
    train = records['train']
    records['train'] = pipeline.RowSubset(train, folds.subset(train.read(np.arange(len(train)))['label'],
                                                              cfg.train_fraction))
  augment = pipeline.Augment(crop_padding=cfg.crop_padding, flip=cfg.flip, image_size=cfg.image_size,
                             mean=tuple(cfg.mean), std=tuple(cfg.std), binarize=cfg.get('binarize', False))
  return pipeline.GrainSource(records, cfg.batch_size, cfg.eval_batch_size, seed, num_classes, augment,
                              num_threads=cfg.num_threads, prefetch=cfg.prefetch,
                              process_index=jax.process_index(), process_count=jax.process_count())


def data_config(tfds_name: str, **overrides) -> ml_collections.ConfigDict:
  """The `data` block of an image config: every key `load` reads, set for `tfds_name`."""
  block = dict(name='tfds', tfds_name=tfds_name, test_split='test', data_dir='', tfds_data_dir='',
               in_memory=True, validation_size=0, folds=0, fold=0, train_fraction=1.0, batch_size=128, eval_batch_size=1000,
               crop_padding=0, flip=False, binarize=False, image_size=0, mean=(0.0,), std=(1.0,), num_threads=2, prefetch=4)
  unknown = sorted(set(overrides) - set(block))
  if unknown:
    raise KeyError(f'unknown data keys {unknown}')
  block.update(overrides)
  return ml_collections.ConfigDict(block)
