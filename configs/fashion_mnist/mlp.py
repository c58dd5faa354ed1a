"""Fashion-MNIST, an MLP with one hidden layer of 100 ReLU units (the benchmark's MLPClassifier shape).

Adam 1e-3 with cosine decay, batch 128, 20 epochs; 5,000 training images held out for validation
(configs/fashion_mnist/common.py).
"""

import os

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.call(os.path.join(os.path.dirname(__file__), 'common.py'), 'protocol')
  config.model = dict(name='mlp', hidden=(100,), dropout=0.0)
  return config
