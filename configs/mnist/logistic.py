"""A shallow softmax classifier (logistic regression) on MNIST pixels in [0, 1], as in Goodfellow,
Shlens & Szegedy (2014) section 5; Adam 1e-3, batch 128, 10 epochs. `logistic.py:fgsm` trains
with their adversarial objective 0.5 J(x) + 0.5 J(x + 0.25 sign grad J)."""

from jaxlab.data.vision_configs import image_config

STEPS_PER_EPOCH = 60000 // 128


def get_config(arg='natural'):
  if arg not in ('natural', 'fgsm'):
    raise ValueError(f"logistic.py takes 'natural' or 'fgsm', got {arg!r}")
  config = image_config('mnist', batch_size=128, eval_batch_size=1000)
  config.model = dict(name='mlp', hidden=())
  config.optimizer.update(dict(name='adam', learning_rate=1e-3))
  config.train.update(dict(num_steps=10 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH, eval_every=5 * STEPS_PER_EPOCH,
                           checkpoint_every=5 * STEPS_PER_EPOCH))
  config.eval.update(dict(attack_eps=(0.1, 0.2, 0.25, 0.3), pgd_steps=20))
  if arg == 'fgsm':
    config.loss.update(dict(adversarial='fgsm', adversarial_eps=0.25, adversarial_weight=0.5))
  return config
