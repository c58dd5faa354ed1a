"""LeNet-5 (LeCun et al. 1998) on MNIST: tanh, average pooling; Adam 1e-3 with cosine decay, batch 128, 20 epochs.

The paper trained 20 passes with stochastic diagonal Levenberg-Marquardt and reports 0.95% test
error (0.8% with distortions). Data: TFDS prepared offline from the IDX files in JAXLAB_DATA_DIR.
"""

from jaxlab.data.vision_configs import image_config

STEPS_PER_EPOCH = 60000 // 128


def get_config(arg=None):
  del arg
  config = image_config('mnist', batch_size=128, eval_batch_size=1000, mean=(0.1307,), std=(0.3081,))
  config.model = dict(name='lenet5', activation='tanh', dropout=0.0)
  config.optimizer.update(dict(name='adam', learning_rate=1e-3, schedule='cosine'))
  config.train.update(dict(num_steps=20 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH, eval_every=5 * STEPS_PER_EPOCH,
                           checkpoint_every=5 * STEPS_PER_EPOCH))
  return config
