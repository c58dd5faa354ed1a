"""LeNet-5 on Fashion-MNIST with few labels, from MNIST or from scratch: `transfer.py:MODE` or `:MODE_search`.

scratch: fresh weights. finetune: every weight from the MNIST LeNet-5 run `init.workdir` (default
runs/mnist-lenet5, `configs/mnist/lenet5.py`), all trained. probe: the same start, only the output
layer `head` trained (a linear probe). Every mode: MNIST's input normalisation (so the loaded
filters see inputs scaled as in their training), Adam with cosine decay, batch 128, evaluated at the end.
The last 5,000 training images are a validation split; 1 %, 10 % and 100 % of the other 55,000 labels are
used (`data.train_fraction`, stratified). `MODE_search` sweeps the learning rate (and, for finetune, the
length) at each fraction for seed 0; the settings with the best validation accuracy are in CHOSEN, which
`MODE`'s sweep (seeds 0-4 at each fraction) runs.
"""

from jaxlab.data.vision_configs import image_config
from jaxlab.launch.sweep import product

MODES = ('scratch', 'finetune', 'probe')
FRACTIONS = (0.01, 0.1, 1.0)
SEARCH = {  # mode: the (key, values) axes searched at every fraction
    'scratch': (('optimizer.learning_rate', [3e-4, 1e-3, 3e-3, 1e-2]),),
    'finetune': (('optimizer.learning_rate', [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]), ('train.num_steps', [1000, 3000])),
    'probe': (('optimizer.learning_rate', [1e-3, 1e-2, 3e-2]),),
}
# (mode, fraction): (learning rate, steps) with the best seed-0 validation accuracy in MODE_search.
CHOSEN = {
    ('scratch', 0.01): (0.003, 3000), ('scratch', 0.1): (0.001, 3000), ('scratch', 1.0): (0.003, 3000),
    ('finetune', 0.01): (0.01, 1000), ('finetune', 0.1): (0.01, 1000), ('finetune', 1.0): (0.003, 3000),
    ('probe', 0.01): (0.01, 3000), ('probe', 0.1): (0.01, 3000), ('probe', 1.0): (0.03, 3000),
}


def _mode(arg: str) -> tuple[str, bool]:
  mode, search = arg.removesuffix('_search'), arg.endswith('_search')
  if mode not in MODES:
    raise ValueError(f"transfer.py takes one of {', '.join(MODES)}, each optionally + '_search', got {arg!r}")
  return mode, search


def get_config(arg='finetune'):
  mode, _ = _mode(arg)
  config = image_config('fashion_mnist', batch_size=128, eval_batch_size=1000, mean=(0.1307,), std=(0.3081,),
                        validation_size=5000)
  config.model = dict(name='lenet5', activation='tanh', dropout=0.0)
  config.optimizer.update(dict(name='adam', learning_rate=1e-4 if mode == 'finetune' else 1e-3, schedule='cosine'))
  config.train.update(dict(num_steps=3000, log_every=500, eval_every=0, checkpoint_every=1000))
  if mode != 'scratch':
    config.init.workdir = 'runs/mnist-lenet5'
    config.optimizer.linear_probe = mode == 'probe'
  return config


def sweep(arg='finetune'):
  mode, search = _mode(arg)
  if search:
    return product(('data.train_fraction', list(FRACTIONS)), *SEARCH[mode])
  chosen = [{'data.train_fraction': f, 'optimizer.learning_rate': CHOSEN[mode, f][0],
             'train.num_steps': CHOSEN[mode, f][1]} for f in FRACTIONS]
  return product(chosen, ('seed', [0, 1, 2, 3, 4]))
