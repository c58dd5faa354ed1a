"""MNIST-1D with a model defined in this folder (experiments/custom_model/model.py), the paper's protocol."""

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.defaults()
  config.model = dict(name='experiments.custom_model.model:SeparableCNN1D', channels=32, depth=3, kernel_size=5)
  return config
