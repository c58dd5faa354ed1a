"""Fashion-MNIST, a small Vision Transformer: 7x7 patches (16 tokens and a class token), 4 layers, 4 heads, width 64.

Adam 1e-3 with cosine decay, batch 128, 20 epochs; 5,000 training images held out for validation
(configs/fashion_mnist/common.py), as the MLP and CNN beside it.
"""

import os

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.call(os.path.join(os.path.dirname(__file__), 'common.py'), 'protocol')
  config.model = dict(name='vit', patch_size=7, num_layers=4, num_heads=4, width=64, dropout=0.0, pool='cls',
                      dtype='float32', param_dtype='float32', remat='none')
  return config
