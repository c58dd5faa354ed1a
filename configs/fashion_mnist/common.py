"""The protocol mlp.py and cnn.py share; not a config itself (it has no model and no get_config).

Adam 1e-3 with cosine decay, batch 128, 20 epochs; 5,000 training images held out for validation.
The configs load this file by path (`config.call`), as config files are not importable modules.
"""

import ml_collections

from jaxlab.data.vision_configs import image_config

STEPS_PER_EPOCH = 55000 // 128


def protocol() -> ml_collections.ConfigDict:
  """Data, optimizer and schedule of the Fashion-MNIST configs; each sets its own `model`."""
  config = image_config('fashion_mnist', batch_size=128, eval_batch_size=1000, mean=(0.2860,), std=(0.3530,),
                        validation_size=5000)
  config.optimizer.update(dict(name='adam', learning_rate=1e-3, schedule='cosine'))
  config.train.update(dict(num_steps=20 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH, eval_every=STEPS_PER_EPOCH,
                           checkpoint_every=5 * STEPS_PER_EPOCH))
  return config
