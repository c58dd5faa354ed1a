"""MNIST-1D CNN (Greydanus 2020): 3 strided conv layers of 25 channels; Adam 1e-2, batch 100, 6000 steps."""

from jaxlab import config as config_lib
from jaxlab.launch.search import choice, loguniform
from jaxlab.launch.sweep import mnist1d_sweep as sweep  # `launch.py sweep --config <this file>`


def get_config(arg=None):
  del arg
  config = config_lib.defaults()
  config.model = dict(name='cnn1d', channels=25, kernel_sizes=(5, 3, 3), strides=(2, 2, 2), padding=1,
                      conv='xla')  # 'matmul': same function, much faster under num_replicas on CPU
  return config


def search(arg=None):
  """Learning rate and width, tuned on 500 examples held out of training: `launch.py search --config <this file>`."""
  del arg
  return {'optimizer.learning_rate': loguniform(1e-3, 1e-1), 'model.channels': choice([8, 16, 25, 32]),
          'data.validation_size': 500}
