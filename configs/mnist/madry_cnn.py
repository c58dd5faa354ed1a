"""Madry et al. (2018)'s MNIST CNN, naturally or adversarially trained: `madry_cnn.py:natural` or `:pgd`.

2 conv layers 32/64 of 5x5 (ReLU, 2x2 max-pool) and FC 1024, Adam 1e-4, batch 50, 100,000 steps.
`:pgd` trains on PGD-40 examples (step 0.01, eps 0.3, one random start) only. Pixels in [0, 1],
not normalised, as in the paper; epsilon is in pixel units either way (attacks.py). Every
evaluation reports accuracy under FGSM and PGD-20 at eps 0.1/0.2/0.3 on the test set;
`launch.py attack --pgd_steps=100 --pgd_restarts=N` runs the paper's stronger final attack.
"""

from jaxlab.data.vision_configs import image_config


def get_config(arg='natural'):
  if arg not in ('natural', 'pgd'):
    raise ValueError(f"madry_cnn.py takes 'natural' or 'pgd', got {arg!r}")
  config = image_config('mnist', batch_size=50, eval_batch_size=1000)
  config.model = dict(name='cnn', channels=(32, 64), kernel_size=5, hidden=(1024,))
  config.optimizer.update(dict(name='adam', learning_rate=1e-4))
  config.train.update(dict(num_steps=100_000, log_every=1000, eval_every=10_000, checkpoint_every=2000))
  config.eval.update(dict(attack_eps=(0.1, 0.2, 0.3), pgd_steps=20))
  if arg == 'pgd':
    config.loss.update(dict(adversarial='pgd', adversarial_eps=0.3, adversarial_steps=40, adversarial_step_size=0.01))
  return config
