"""MNIST-1D MLP (Greydanus 2020): two hidden layers of 100, the second residual; Adam 1e-2, batch 100, 6000 steps."""

from jaxlab import config as config_lib
from jaxlab.sweep import product


def get_config(arg=None):
  del arg
  config = config_lib.defaults()
  config.model = dict(name='mlp', hidden=(100, 100), residual=True)
  return config


def sweep(arg=None):
  """Learning rate around the paper's 1e-2, three seeds each: `launch.py sweep --config <this file>`."""
  del arg
  return product(('optimizer.learning_rate', [3e-3, 1e-2, 3e-2]), ('seed', [0, 1, 2]))
