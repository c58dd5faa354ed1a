"""MNIST-1D CNN (Greydanus 2020): 3 strided conv layers of 25 channels; Adam 1e-2, batch 100, 6000 steps."""

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.defaults()
  config.model = dict(name='cnn1d', channels=25, kernel_sizes=(5, 3, 3), strides=(2, 2, 2), padding=1)
  return config
