"""The shared starting point of image-classification configs (configs/mnist, cifar10, ...)."""

from __future__ import annotations

import ml_collections

from jaxlab import config as config_lib
from jaxlab.data.vision import data_config


def image_config(tfds_name: str, **data_overrides) -> ml_collections.ConfigDict:
  """defaults() with an image `data` block."""
  config = config_lib.defaults()
  config.data = data_config(tfds_name, **data_overrides)
  return config
