"""MNIST-1D logistic regression (Greydanus 2020): one linear layer; Adam 1e-2, batch 100, 6000 steps."""

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  config = config_lib.defaults()
  config.model = dict(name='mlp', hidden=())
  return config
