"""LeNet-5 on Fashion-MNIST with few labels, from MNIST or from scratch: `transfer.py:scratch|finetune|probe`.

scratch: fresh weights. finetune: every weight from the MNIST LeNet-5 run `init.workdir` (default
runs/mnist-lenet5, `configs/mnist/lenet5.py`), all trained. probe: the same start, only the output
layer `head` trained (a linear probe). Every mode: MNIST's input normalisation (so the loaded
filters see inputs scaled as in their training), Adam with cosine decay (1e-3; 1e-4 to fine-tune),
batch 128, 3000 steps whatever the number of labels, evaluated at the end. The sweep covers 1 %,
10 % and 100 % of the training labels (`data.train_fraction`, stratified) and seeds 0, 1, 2.
"""

from jaxlab.data.vision_configs import image_config
from jaxlab.launch.sweep import product

MODES = ('scratch', 'finetune', 'probe')


def get_config(arg='finetune'):
  if arg not in MODES:
    raise ValueError(f"transfer.py takes one of {', '.join(MODES)}, got {arg!r}")
  config = image_config('fashion_mnist', batch_size=128, eval_batch_size=1000, mean=(0.1307,), std=(0.3081,))
  config.model = dict(name='lenet5', activation='tanh', dropout=0.0)
  config.optimizer.update(dict(name='adam', learning_rate=1e-4 if arg == 'finetune' else 1e-3, schedule='cosine'))
  config.train.update(dict(num_steps=3000, log_every=500, eval_every=0, checkpoint_every=1000))
  if arg != 'scratch':
    config.init.workdir = 'runs/mnist-lenet5'
    config.optimizer.linear_probe = arg == 'probe'
  return config


def sweep(arg=None):
  del arg
  return product(('data.train_fraction', [0.01, 0.1, 1.0]), ('seed', [0, 1, 2]))
