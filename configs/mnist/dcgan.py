"""DCGAN (Radford et al. 2016) on MNIST, or on Fashion-MNIST with `dcgan.py:fashion_mnist`.

Generator 100 -> dense 7x7x64 -> transposed conv 32 -> transposed conv 1 (4x4, stride 2), BatchNorm and
ReLU between, tanh out; discriminator conv 32 -> conv 64 (BatchNorm) -> one logit, LeakyReLU 0.2. Both
trained by Adam 2e-4, b1 0.5 (the paper's), batch 64, one discriminator step per generator step. Sized
for a 2-core CPU: the paper's widths are `--config.model.features=64` (about 4x the compute).
Trained until the Fréchet distance on a validation split (5,000 images held out of the training set)
has not improved for 5 evaluations of 1,000 steps, at most 80,000 steps (93 epochs); the state of the
best validation distance is kept and evaluated on test.
Evaluation: the Fréchet distance between as many generated images as the split has and the split, in
the feature space of a LeNet-5 jaxlab trained on the same dataset (gan.frechet_run, default
runs/<dataset>-lenet5: `configs/mnist/lenet5.py`, with `--config.data.tfds_name=fashion_mnist` for
Fashion-MNIST), beside the floor: as many training images against the split.
"""

from jaxlab.data.vision_configs import image_config

DATASETS = ('mnist', 'fashion_mnist')


def get_config(arg='mnist'):
  if arg not in DATASETS:
    raise ValueError(f"dcgan.py takes one of {', '.join(DATASETS)}, got {arg!r}")
  config = image_config(arg, batch_size=64, eval_batch_size=1000)
  config.data.validation_size = 5_000
  config.task = 'gan'
  config.model = dict(name='dcgan', latent=100, features=32, spectral_norm=False)
  config.optimizer.update(dict(name='adam', learning_rate=2e-4, b1=0.5, schedule='constant'))
  config.discriminator_optimizer = config.optimizer.to_dict()
  config.gan = dict(discriminator_steps=1, frechet_run=f'runs/{arg}-lenet5')
  config.train.update(dict(num_steps=80_000, log_every=250, eval_every=1_000, checkpoint_every=1_000,
                           early_stopping_metric='validation_frechet', early_stopping_mode='min',
                           early_stopping_patience=5))
  return config
