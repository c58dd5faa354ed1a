"""LeNet-300-100 on MNIST, dense or magnitude-pruned as in Han et al. (2015), Table 1: `lenet300.py:dense|pruned`.

dense: 784-300-100-10 ReLU, Adam 1e-3 with cosine decay, batch 128, 30 epochs (paper: 1.64 % test error).
pruned: starts from the dense run's newest checkpoint (`init.workdir`, default runs/lenet300-dense) and
prunes the three weight matrices to the paper's kept fractions, 8 %, 9 % and 26 %, in three
prune-retrain rounds (a third, two thirds, all of each target, at epochs 0, 5 and 10), retraining at
Adam 3e-4 with cosine decay for 30 epochs in all (paper: 1.59 % with 12x fewer weights). Biases are
not pruned. The paper's Caffe settings are not given; the retraining rate and length were picked
from four tries on seed 0 (experiments/pruning_lenet).
"""

from jaxlab.data.vision_configs import image_config

STEPS_PER_EPOCH = 60000 // 128
KEPT = {'Dense_0/kernel': 0.08, 'Dense_1/kernel': 0.09, 'head/kernel': 0.26}  # Han et al. Table 2


def get_config(arg='dense'):
  if arg not in ('dense', 'pruned'):
    raise ValueError(f"lenet300.py takes 'dense' or 'pruned', got {arg!r}")
  config = image_config('mnist', batch_size=128, eval_batch_size=1000, mean=(0.1307,), std=(0.3081,))
  config.model = dict(name='mlp', hidden=(300, 100))
  config.optimizer.update(dict(name='adam', learning_rate=1e-3, schedule='cosine'))
  if arg == 'pruned':
    config.init.workdir = 'runs/lenet300-dense'
    config.optimizer.learning_rate = 3e-4
    config.optimizer.prune.update(dict(sparsity=tuple((f'^{path}$', 1 - kept) for path, kept in KEPT.items()),
                                       steps=(0, 5 * STEPS_PER_EPOCH, 10 * STEPS_PER_EPOCH)))
  config.train.update(dict(num_steps=30 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                           eval_every=5 * STEPS_PER_EPOCH, checkpoint_every=5 * STEPS_PER_EPOCH))
  return config
