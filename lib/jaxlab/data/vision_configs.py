"""The shared starting point of image-classification configs (configs/mnist, cifar10, ...)."""

from __future__ import annotations

import ml_collections

from jaxlab import config as config_lib
from jaxlab.data.vision import data_config


def image_config(tfds_name: str, **data_overrides) -> ml_collections.ConfigDict:
  """defaults() with an image `data` block and the regulariser and early-stopping keys present.

  Every key exists (at its 'off' value) so that any of them can be set from the command line.
  """
  config = config_lib.defaults()
  config.data = data_config(tfds_name, **data_overrides)
  config.loss = dict(label_smoothing=0.0, l1=0.0, l2=0.0)
  config.train.early_stopping_metric = ''  # e.g. 'validation_accuracy' (needs data.validation_size)
  config.train.early_stopping_mode = 'max'
  config.train.early_stopping_patience = 0  # evaluations without improvement before stopping; 0: never
  return config
