"""Autoencoders, VAEs and GANs: their math against closed forms, their training through the shared loop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special
from conftest import ROOT, launch, sigterm_at, train_on_devices

from jaxlab import config as config_lib
from jaxlab import tasks
from jaxlab.data import pipeline, vision
from jaxlab.errors import NonFiniteLossError
from jaxlab.observe import images
from jaxlab.run import program as program_lib
from jaxlab.run import train
from jaxlab.tasks import frechet
from jaxlab.tasks.autoencoder import gaussian_kl
from jaxlab.tasks.base import example_keys
from jaxlab.tasks.gan import GAN, FrechetReference

SMALL = {  # tiny versions of configs/mnist/vae.py and dcgan.py
    'vae': {'model.hidden': (32,), 'model.latent': 4, 'vae.iwae_samples': 0},
    'conv': {'model.channels': (4, 8), 'model.latent': 4, 'vae.iwae_samples': 0},
    'autoencoder': {'model.hidden': (32,), 'model.latent': 4},
    'gan': {'model.features': 8, 'model.latent': 8, 'gan.frechet_run': '', 'data.validation_size': 0,
            'train.early_stopping_metric': ''},
}


def tiny_config(kind: str, **overrides):
  """configs/mnist/vae.py or dcgan.py on stand-in images: 2 training batches of 16, 12 steps."""
  name, arg = ('dcgan.py', 'mnist') if kind == 'gan' else ('vae.py', 'mlp' if kind == 'vae' else kind)
  config = config_lib.load(os.path.join(ROOT, 'configs', 'mnist', f'{name}:{arg}'))
  settings = {'data.name': 'standin', 'data.batch_size': 16, 'data.eval_batch_size': 16, 'train.num_steps': 12,
              'train.log_every': 4, 'train.eval_every': 6, 'train.checkpoint_every': 6, **SMALL[kind], **overrides}
  for key, value in settings.items():
    config_lib.set_value(config, key, value)
  return config


def _params(config, workdir):
  return jax.device_get(program_lib.restore_checkpoint(config, str(workdir))[2])


# --- the math ---------------------------------------------------------------------------------------------------

def test_gaussian_kl_matches_a_monte_carlo_estimate():
  rng = np.random.default_rng(0)
  mean, log_var = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(scale=0.5, size=(3, 5)).astype(np.float32)
  n = 400_000
  z = mean + np.exp(0.5 * log_var) * rng.normal(size=(n, 3, 5))
  log_q = -0.5 * np.sum(np.log(2 * np.pi) + log_var + (z - mean) ** 2 / np.exp(log_var), -1)
  log_p = -0.5 * np.sum(np.log(2 * np.pi) + z ** 2, -1)
  estimate, error = (log_q - log_p).mean(0), 4 * (log_q - log_p).std(0) / np.sqrt(n)
  kl = np.asarray(gaussian_kl(jnp.asarray(mean), jnp.asarray(log_var)))
  assert np.all(np.abs(kl - estimate) < error), (kl, estimate, error)
  assert np.asarray(gaussian_kl(jnp.zeros((1, 5)), jnp.zeros((1, 5))))[0] == 0.0


def test_frechet_distance_is_zero_for_a_set_with_itself_and_the_squared_shift_for_a_shifted_one():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
  mean, cov = features.mean(0), np.cov(features, rowvar=False)
  assert abs(frechet.distance(mean, cov, mean, cov)) < 1e-8
  shift = np.array([0.5, -1.0, 0, 0, 2.0, 0])  # the covariances are equal: only ||shift||^2 = 5.25 is left
  assert frechet.distance(mean, cov, mean + shift, cov) == pytest.approx(5.25, rel=1e-9)
  assert frechet.distance(mean, cov, mean + 2 * shift, cov) == pytest.approx(21.0, rel=1e-9)
  other = np.cov(rng.normal(size=(2000, 6)), rowvar=False)  # against scipy's general matrix square root
  expected = np.sum((mean - 1) ** 2) + np.trace(cov + other - 2 * scipy.linalg.sqrtm(cov @ other).real)
  assert frechet.distance(mean, cov, np.ones(6), other) == pytest.approx(expected, rel=1e-6)


def test_feature_sums_give_the_mean_and_sample_covariance_of_the_real_rows():
  rng = np.random.default_rng(1)
  features, real = rng.normal(size=(50, 4)).astype(np.float32), rng.random(50) < 0.7
  total, outer = frechet.feature_sums(jnp.asarray(features), jnp.asarray(real))
  mean, cov = frechet.moments(np.asarray(total), np.asarray(outer), real.sum())
  np.testing.assert_allclose(mean, features[real].mean(0), atol=1e-6)
  np.testing.assert_allclose(cov, np.cov(features[real], rowvar=False), atol=1e-5)


def test_each_split_gets_its_own_floor_from_as_many_training_images():
  rng = np.random.default_rng(2)
  train = rng.uniform(size=(60, 2, 2, 1)).astype(np.float32)
  flat = lambda pixels: jnp.reshape(pixels, (pixels.shape[0], -1))  # 4 features: the pixels themselves
  gan = GAN(model=None, generator_tx=None, discriminator_tx=None, pixel_space=None,
            reference=FrechetReference(flat, lambda: train))

  def scipy_distance(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)

  for split in (rng.uniform(size=(12, 2, 2, 1)), rng.uniform(0.3, 1.5, size=(25, 2, 2, 1))):  # validation, test
    real_sums = frechet.feature_sums(flat(jnp.asarray(split, jnp.float32)), jnp.ones(len(split), bool))
    fake = split[::-1] + 0.5  # shifted by 0.5 in each of 4 features: distance 4 x 0.25 = 1
    fake_sums = frechet.feature_sums(flat(jnp.asarray(fake, jnp.float32)), jnp.ones(len(split), bool))
    reported = gan.summarize({'count': np.int32(len(split)), 'real_features': real_sums[0], 'real_outer': real_sums[1],
                              'fake_features': fake_sums[0], 'fake_outer': fake_sums[1]})
    drawn = train[np.sort(np.random.default_rng(0).choice(len(train), len(split), replace=False))]
    assert reported['frechet'] == pytest.approx(1.0, rel=1e-4)
    assert reported['frechet_floor'] == pytest.approx(scipy_distance(drawn, split), rel=1e-4)


def test_binarize_turns_each_pixel_on_with_its_intensity_the_same_way_for_the_same_key():
  images_ = np.broadcast_to(np.array([0, 51, 128, 255], np.uint8)[None, :, None, None], (500, 4, 50, 1))
  keys = pipeline.example_keys(7, np.arange(500))
  out = pipeline.binarize(images_, keys)
  assert set(np.unique(out)) <= {0, 255}
  on = (out == 255).mean(axis=(0, 2, 3))  # 25,000 draws per intensity: 4 standard deviations is < 0.013
  np.testing.assert_allclose(on, [0.0, 0.2, 128 / 255, 1.0], atol=0.013)
  np.testing.assert_array_equal(out, pipeline.binarize(images_, keys))
  assert (pipeline.binarize(images_, pipeline.example_keys(8, np.arange(500))) != out).any()


def test_binarized_training_batches_change_with_the_step_and_the_test_set_is_fixed_across_seeds():
  cfg = vision.data_config('mnist', name='standin', batch_size=8, eval_batch_size=8, binarize=True)
  a, b = vision.load(cfg, seed=0), vision.load(cfg, seed=0)
  np.testing.assert_array_equal(a.train_batch(3)['x'], b.train_batch(3)['x'])
  assert set(np.unique(a.train_batch(3)['x'])) <= {0.0, 1.0}
  # With a seed of another run the stand-in images differ; the binarization of the same images must not.
  test = lambda seed: vision.load(cfg, seed=seed).eval_batch('test', 0)
  records = a.splits['test'].read(np.arange(8))['image']
  expected = pipeline.binarize(records, pipeline.example_keys(pipeline.BINARIZE_TEST_SEED, np.arange(8))) / 255.0
  np.testing.assert_array_equal(test(0)['x'], expected)
  np.testing.assert_array_equal(test(0)['index'], np.arange(8))


def test_image_grid_places_each_image_in_its_cell_with_white_gaps():
  pictures = np.stack([np.full((2, 3, 1), i / 4) for i in range(5)])
  out = images.grid(pictures, columns=2)
  assert out.shape == (3 * 3 + 1, 2 * 4 + 1, 1) and out.dtype == np.uint8
  assert out[1, 1, 0] == 0 and out[1, 5, 0] == 64 and out[4, 1, 0] == 128 and out[7, 1, 0] == 255
  assert out[0, :, 0].min() == 255 and out[7, 5, 0] == 255  # a gap row; the empty sixth cell stays white


# --- models -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize('spectral_norm', [False, True])
def test_dcgan_generates_images_of_the_data_shape_in_minus_one_to_one(shape, spectral_norm):
  from jaxlab.models.generative import DCGAN
  model = DCGAN(shape, latent=8, features=4, spectral_norm=spectral_norm)
  variables = model.init(jax.random.key(0), jnp.zeros((2, *shape)))
  fake = model.apply(variables, jax.random.normal(jax.random.key(1), (3, 8)), method='generate')
  assert fake.shape == (3, *shape) and float(jnp.abs(fake).max()) <= 1.0
  assert model.apply(variables, fake, method='discriminate').shape == (3,)
  assert set(variables['params']) == {'generator', 'discriminator'}
  assert ('SpectralNorm' in str(jax.tree_util.tree_structure(variables['batch_stats']))) == spectral_norm


def test_image_sides_the_convolutions_cannot_halve_are_one_line(tmp_path):
  proc = launch('--config', 'configs/mnist/dcgan.py', '--config.data.name=standin', '--config.data.tfds_name=cifar10',
                '--config.model.features=4', '--config.gan.frechet_run=', '--config.train.num_steps=1',
                '--config.data.validation_size=0', '--config.train.early_stopping_metric=',
                '--config.model.latent=4', '--config.data.batch_size=8', '--config.data.eval_batch_size=8',
                f'--workdir={tmp_path}', '--config.data.image_size=30')
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      "error: model 'dcgan': images of 30x30 cannot be halved 2 times; the convolutional models need sides "
      'divisible by 4')


# --- training through the loop ----------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['vae', 'conv', 'autoencoder', 'gan'])
def test_training_resumes_bitwise_after_sigterm(kind, tmp_path):
  config = tiny_config(kind)
  whole = train.train(config, str(tmp_path / 'whole'))

  assert train.train(config, str(tmp_path / 'resumed'), hooks=[sigterm_at(5)])['preempted']
  resumed = train.train(config, str(tmp_path / 'resumed'))
  assert 0 < resumed['steps_trained'] < 12
  a, b = _params(config, tmp_path / 'whole'), _params(config, tmp_path / 'resumed')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):  # params, both optimizers, BatchNorm
    np.testing.assert_array_equal(x, y)
  assert {k: v for k, v in whole.items() if k.startswith('test')} == {
      k: v for k, v in resumed.items() if k.startswith('test')}
  pictures = os.listdir(tmp_path / 'whole' / 'samples')
  expected = {'gan': ['samples'], 'autoencoder': ['reconstructions']}.get(kind, ['reconstructions', 'samples'])
  assert sorted(p.split('_', 2)[2] for p in pictures if p.startswith('step_00000012')) == [f'{e}.png' for e in expected]


def test_each_gan_network_is_changed_by_its_own_optimizer_only(tmp_path):
  config = tiny_config('gan', **{'train.num_steps': 1, 'train.eval_every': 0, 'train.checkpoint_every': 1})
  source = vision.load(config.data, config.seed)
  batch = source.train_batch(0)

  def one_step(generator_lr, discriminator_lr):
    config_lib.set_value(config, 'optimizer.learning_rate', generator_lr)
    config_lib.set_value(config, 'discriminator_optimizer.learning_rate', discriminator_lr)
    task = tasks.make(config, source)
    before = task.init(jax.random.key(0), batch)
    after, metrics = jax.jit(task.train_step)(before, batch)
    changed = {name: any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
        jax.tree.leaves(before.params[name]), jax.tree.leaves(after.params[name]))) for name in ('generator', 'discriminator')}
    return changed, metrics

  both, metrics = one_step(1e-3, 1e-3)
  assert both == {'generator': True, 'discriminator': True}
  assert metrics['loss'] == metrics['d_loss'] + metrics['g_loss']
  assert one_step(0.0, 1e-3)[0] == {'generator': False, 'discriminator': True}
  assert one_step(1e-3, 0.0)[0] == {'generator': True, 'discriminator': False}


def test_a_diverging_gan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config('gan', **{'train.num_steps': 40, 'train.checkpoint_every': 2, 'train.eval_every': 0,
                                 'train.log_every': 1, 'optimizer.name': 'sgd', 'optimizer.learning_rate': 100.0,
                                 'discriminator_optimizer.name': 'sgd', 'discriminator_optimizer.learning_rate': 100.0})
  with pytest.raises(NonFiniteLossError, match=r'at step \d+') as error:
    train.train(config, str(tmp_path))
  step, _, state = program_lib.restore_checkpoint(config, str(tmp_path))
  stopped = int(str(error.value).split('at step ')[1].split(';')[0])
  assert 0 < step < stopped < 40 and f'Last good checkpoint: step {step} ' in str(error.value)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_iwae_bound_with_100_samples_is_below_the_one_sample_bound_on_a_trained_vae(tmp_path):
  config = tiny_config('vae', **{'train.num_steps': 60, 'train.eval_every': 0})
  train.train(config, str(tmp_path))
  _, program, state = program_lib.restore_checkpoint(config, str(tmp_path))
  task, batch = program.task, next(iter(program.source.eval_batches('test')))
  keys = example_keys(batch)
  bound = lambda k: np.asarray(jax.jit(task.iwae_bound, static_argnums=3)(state.params, batch, keys, k))
  one, hundred = bound(1), bound(100)
  real = batch['mask'] > 0
  assert hundred[real].mean() < one[real].mean() - 0.1
  # k = 5 against the definition, written out in numpy from the model's encoder and decoder
  params, x = state.params, batch['x'][:3]
  mean, log_var = (np.asarray(a, np.float64) for a in task.model.apply({'params': params}, x, method='encode'))
  log_weights = []
  for i in range(5):
    eps = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, i), mean.shape[-1:])) for k in keys[:3]])
    z = mean + np.exp(0.5 * log_var) * eps
    logits = np.asarray(task.model.apply({'params': params}, z.astype(np.float32), method='decode'), np.float64)
    target = np.asarray(x, np.float64)
    log_px = np.sum(target * -np.logaddexp(0, -logits) + (1 - target) * -np.logaddexp(0, logits), axis=(1, 2, 3))
    log_pz = -0.5 * np.sum(np.log(2 * np.pi) + z ** 2, -1)
    log_qz = -0.5 * np.sum(np.log(2 * np.pi) + log_var + eps ** 2, -1)
    log_weights.append(log_px + log_pz - log_qz)
  expected = -(scipy.special.logsumexp(np.stack(log_weights), axis=0) - np.log(5))
  np.testing.assert_allclose(bound(5)[:3], expected, rtol=1e-5)
  # k = 1 is the ELBO at one sample: on average over the test images it is the negative ELBO's value.
  reconstruction, kl = task._terms(state.params, batch, keys)
  elbo = np.asarray(reconstruction + kl)
  assert abs(one[real].mean() - elbo[real].mean()) < 0.05 * elbo[real].mean()


def test_the_sample_command_writes_a_grid_of_the_requested_size(tmp_path):
  config = tiny_config('vae')
  train.train(config, str(tmp_path))
  proc = launch('sample', f'--workdir={tmp_path}', '--num=6', '--seed=2')
  assert proc.returncode == 0, proc.stderr[-2000:]
  path = proc.stdout.strip().split(' | ')[-1]
  assert path == str(tmp_path / 'samples' / 'sample_step12_seed2_6.png')
  from PIL import Image
  assert np.asarray(Image.open(path)).shape == (2 * 29 + 1, 3 * 29 + 1)  # 6 images: 3 columns, 2 rows
  # Refused before anything is allocated or written: more images than one grid holds, a language model's flag.
  before = sorted(os.listdir(tmp_path / 'samples'))
  for flag, message in (('--num=100000000', '--num 100000000 images do not fit one grid; at most 1024'),
                        ('--num_tokens=10', '--num_tokens is a flag for a language-model run')):
    bad = launch('sample', f'--workdir={tmp_path}', flag)
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and message in bad.stderr, bad.stderr
  assert sorted(os.listdir(tmp_path / 'samples')) == before


def test_gan_evaluation_reports_the_frechet_distance_and_its_floor(tmp_path):
  classifier = tiny_config('gan')
  with classifier.unlocked():
    classifier.task = 'classification'
    classifier.model = dict(name='lenet5', activation='tanh', dropout=0.0)
  train.train(classifier, str(tmp_path / 'classifier'))
  config = tiny_config('gan', **{'gan.frechet_run': str(tmp_path / 'classifier')})
  summary = train.train(config, str(tmp_path / 'gan'))
  record = json.loads((tmp_path / 'gan' / 'eval_test.json').read_text())
  assert summary['test_frechet'] == record['frechet'] > summary['test_frechet_floor'] > 0



def test_a_vae_trains_alike_on_one_and_on_eight_devices(tmp_path):
  setup = "from test_generative import tiny_config\nconfig = tiny_config('vae')"
  (one, summary_one), (eight, summary_eight) = (train_on_devices(tmp_path, d, setup) for d in (1, 8))
  for a, b in zip(one, eight, strict=True):  # 12 steps; float sums in another order drift further over longer runs
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert summary_one['test_loss'] == pytest.approx(summary_eight['test_loss'], rel=1e-5)
