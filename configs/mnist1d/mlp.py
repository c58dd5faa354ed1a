"""MNIST-1D MLP (Greydanus 2020): two hidden layers of 100, the second residual; Adam 1e-2, batch 100, 6000 steps."""

from jaxlab import config as config_lib
from jaxlab.launch.sweep import mnist1d_sweep as sweep  # `launch.py sweep --config <this file>`


def get_config(arg=None):
  del arg
  config = config_lib.defaults()
  config.model = dict(name='mlp', hidden=(100, 100), residual=True)
  return config
