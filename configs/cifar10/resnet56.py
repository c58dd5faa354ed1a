"""ResNet-56 on CIFAR-10 (He et al. 2016): the ResNet-20 protocol (configs/cifar10/resnet20.py) at depth 56."""

import os

from jaxlab import config as config_lib


def get_config(arg=None):
  del arg
  return config_lib.call(os.path.join(os.path.dirname(__file__), 'resnet20.py:56'), 'get_config')
