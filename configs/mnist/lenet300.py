"""LeNet-300-100 on MNIST, dense or magnitude-pruned as in Han et al. (2015), Table 1: `lenet300.py:dense|pruned`.

Both hold out the last 5,000 training images as a validation split, on which every retraining choice
was made (two stages of seed-0 sweeps, `sweep()` below; experiments/pruning_lenet shows them).
dense: 784-300-100-10 ReLU, Adam 1e-3 with cosine decay, batch 128, 30 epochs (paper: 1.64 % test error).
pruned: starts from the dense run's newest checkpoint (`init.workdir`, default runs/lenet300-dense) and
prunes the three weight matrices to the paper's kept fractions, 8 %, 9 % and 26 %, in three
prune-retrain rounds (a third, two thirds, all of each target, at epochs 0, 5 and 10), retraining at
Adam 1e-3 with cosine decay, dropout 0.2 and L2 1e-4 for 60 epochs in all (paper: 1.59 % with 12x fewer
weights). Biases are not pruned. The paper's Caffe retraining settings are not given.
"""

from jaxlab.data.vision_configs import image_config
from jaxlab.launch.sweep import product

VALIDATION_SIZE = 5000  # the last 5,000 training images: every retraining choice is made on them
STEPS_PER_EPOCH = (60000 - VALIDATION_SIZE) // 128
KEPT = {'Dense_0/kernel': 0.08, 'Dense_1/kernel': 0.09, 'head/kernel': 0.26}  # Han et al. Table 2


def prune_steps(rounds: int, every_epochs: int) -> tuple[int, ...]:
  """`rounds` prune events `every_epochs` apart from step 0; each prunes 1/rounds more of each target."""
  return tuple(i * every_epochs * STEPS_PER_EPOCH for i in range(rounds))


def get_config(arg='dense'):
  if arg not in ('dense', 'pruned', 'schedule'):
    raise ValueError(f"lenet300.py takes 'dense', 'pruned' or 'schedule' (pruned, for its sweep), got {arg!r}")
  config = image_config('mnist', batch_size=128, eval_batch_size=1000, mean=(0.1307,), std=(0.3081,),
                        validation_size=VALIDATION_SIZE)
  config.model = dict(name='mlp', hidden=(300, 100), dropout=0.0)
  config.optimizer.update(dict(name='adam', learning_rate=1e-3, schedule='cosine'))
  epochs = 30
  if arg != 'dense':
    epochs = 60
    config.init.workdir = 'runs/lenet300-dense'
    config.model.dropout = 0.2
    config.optimizer.weight_decay = 1e-4
    config.optimizer.prune.update(dict(sparsity=tuple((f'^{path}$', 1 - kept) for path, kept in KEPT.items()),
                                       steps=prune_steps(3, 5)))
  config.train.update(dict(num_steps=epochs * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                           eval_every=5 * STEPS_PER_EPOCH, checkpoint_every=5 * STEPS_PER_EPOCH))
  return config


def sweep(arg='pruned'):
  """Retraining settings tried on seed 0's validation split, in two stages (experiments/pruning_lenet).

  `lenet300.py:pruned` with `--config.seed=0`: learning rate x length x regulariser, linear ramp of 3
  events 5 epochs apart. `lenet300.py:schedule`: the pruning schedule at stage 1's best (1e-3, 60, dropout 0.2),
  and L2 beside its dropout.
  """
  if arg == 'schedule':
    schedules = [{'optimizer.prune.ramp': 'linear', 'optimizer.prune.steps': prune_steps(6, 4)},
                 {'optimizer.prune.ramp': 'cubic', 'optimizer.prune.steps': prune_steps(6, 3)},
                 {'optimizer.prune.ramp': 'cubic', 'optimizer.prune.steps': prune_steps(10, 2)},
                 {'optimizer.prune.ramp': 'linear', 'optimizer.prune.steps': prune_steps(3, 5),
                  'optimizer.weight_decay': 1e-4}]
    return [{'optimizer.weight_decay': 0.0, **point} for point in schedules]
  regularisers = [{'model.dropout': 0.0, 'optimizer.weight_decay': 0.0},
                  {'model.dropout': 0.0, 'optimizer.weight_decay': 1e-4},  # L2, as the paper's retraining
                  {'model.dropout': 0.2, 'optimizer.weight_decay': 0.0}]
  lengths = [30 * STEPS_PER_EPOCH, 60 * STEPS_PER_EPOCH]
  return product(('optimizer.learning_rate', [3e-4, 1e-3]), ('train.num_steps', lengths), regularisers)
