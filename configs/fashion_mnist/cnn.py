"""Fashion-MNIST, a small CNN: 2 x (conv 3x3 -> ReLU -> max-pool) with 32/64 channels, dense 128, dropout 0.25.

Adam 1e-3 with cosine decay, batch 128, 20 epochs; 5,000 training images held out for validation
(configs/fashion_mnist/common.py).
"""

import os

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.call(os.path.join(os.path.dirname(__file__), 'common.py'), 'protocol')
  config.model = dict(name='cnn', channels=(32, 64), hidden=(128,), dropout=0.25, batch_norm=False)
  return config
