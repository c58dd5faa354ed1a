"""(Variational) autoencoders on binarized MNIST: `vae.py:mlp|conv|latent2|autoencoder|denoising`.

mlp: the flax examples VAE, 784-500-20-500-784 with a Bernoulli decoder, Adam 1e-3, batch 128, 10
epochs; the test set's negative ELBO and the IWAE bound with k = 100 at the end (Burda et al.).
conv: the same with two stride-2 convolutions (32, 64 channels) each way. latent2: mlp with a 2-d
code, whose decoded latent manifold each evaluation draws. autoencoder: mlp without the
variational part, Bernoulli reconstruction. denoising: the autoencoder with inputs corrupted by
Gaussian noise of std 0.3 (pixel scale) in training.

Binarization: every training image is resampled from its intensities at every step (a function of
(seed, step)); the test set once, from a fixed seed (data.binarize; jaxlab.data.pipeline.binarize).
TFDS's `binarized_mnist` (Larochelle's fixed binarization) is not available offline.
"""

from jaxlab.data.vision_configs import image_config

STEPS_PER_EPOCH = 60000 // 128
KINDS = ('mlp', 'conv', 'latent2', 'autoencoder', 'denoising')


def get_config(arg='mlp'):
  if arg not in KINDS:
    raise ValueError(f"vae.py takes one of {', '.join(KINDS)}, got {arg!r}")
  config = image_config('mnist', batch_size=128, eval_batch_size=1000, binarize=True)
  config.model = dict(name='autoencoder', architecture='conv' if arg == 'conv' else 'mlp', hidden=(500,),
                      channels=(32, 64), latent=2 if arg == 'latent2' else 20)
  if arg in ('autoencoder', 'denoising'):
    config.task = 'autoencoder'
    config.autoencoder = dict(loss='bernoulli', denoise=0.3 if arg == 'denoising' else 0.0)
  else:
    config.task = 'vae'
    config.vae = dict(loss='bernoulli', beta=1.0, iwae_samples=100)
  config.optimizer.update(dict(name='adam', learning_rate=1e-3, schedule='constant'))
  config.train.update(dict(num_steps=10 * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH, eval_every=10 * STEPS_PER_EPOCH,
                           checkpoint_every=5 * STEPS_PER_EPOCH))
  return config
