"""Vision models (LeNet-5, CNN, ResNet with BatchNorm), image configs on stand-in data, and regularisers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT

from jaxlab import config as config_lib
from jaxlab import models, optim
from jaxlab.data import vision
from jaxlab.errors import ConfigError
from jaxlab.run import train
from jaxlab.tasks.classification import Classification, weight_penalty

CONFIGS = ['mnist/lenet5', 'mnist/madry_cnn', 'mnist/logistic', 'mnist/hinton', 'mnist/lenet300', 'fashion_mnist/transfer', 'fashion_mnist/cnn', 'fashion_mnist/mlp', 'cifar10/resnet20', 'cifar10/resnet56',
           'imagenet/resnet50']


def _load(name, **overrides):
  config = config_lib.load(os.path.join(ROOT, 'configs', f'{name}.py'))
  for key, value in overrides.items():
    config_lib.set_value(config, key, value)
  return config


def _num_params(model, shape):
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('name', CONFIGS)
def test_standin_config_model_gives_one_logit_per_class(name):
  config = _load(name)
  shape, num_classes = vision.SHAPES[config.data.tfds_name]
  model = models.create(config.model, num_classes)
  logits = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], jnp.zeros((2, *shape)))
  assert logits.shape == (2, num_classes)


@pytest.mark.parametrize('model_cfg, shape, expected', [
    ({'name': 'lenet5'}, (28, 28, 1), 61_706),  # LeCun et al. 1998 with a fully connected C3
    # Madry et al. 2018's MNIST CNN by hand: 5*5*32+32 + 5*5*32*64+64 + 7*7*64*1024+1024 + 1024*10+10
    ({'name': 'cnn', 'channels': (32, 64), 'kernel_size': 5, 'hidden': (1024,)}, (28, 28, 1), 3_274_634),
    # Hinton et al. 2015's MNIST teacher and student: 784*1200+1200 + 1200*1200+1200 + 1200*10+10, and 800 wide
    ({'name': 'mlp', 'hidden': (1200, 1200)}, (28, 28, 1), 2_395_210),
    ({'name': 'mlp', 'hidden': (800, 800)}, (28, 28, 1), 1_276_810),
    ({'name': 'mlp', 'hidden': (300, 100)}, (28, 28, 1), 266_610),  # Han et al. 2015, Table 1: 267K
    ({'name': 'resnet', 'depth': 20, 'style': 'cifar'}, (32, 32, 3), 0.27e6),  # He et al. 2016, Table 6
    ({'name': 'resnet', 'depth': 56, 'style': 'cifar'}, (32, 32, 3), 0.85e6),
    ({'name': 'resnet', 'depth': 18, 'style': 'imagenet'}, (224, 224, 3), 11.7e6),
    ({'name': 'resnet', 'depth': 50, 'style': 'imagenet'}, (224, 224, 3), 25.6e6),
])
def test_parameter_counts_match_the_papers(model_cfg, shape, expected):
  import ml_collections
  num_classes = 1000 if model_cfg.get('style') == 'imagenet' else 10
  n = _num_params(models.create(ml_collections.ConfigDict(model_cfg), num_classes), shape)
  assert abs(n - expected) / expected < 0.01


def test_bad_resnet_depth_is_a_config_error():
  import ml_collections
  with pytest.raises(ConfigError, match='6n\\+2'):
    models.create(ml_collections.ConfigDict({'name': 'resnet', 'depth': 21, 'style': 'cifar'}), 10)


def _task(model_cfg, **kwargs):
  import ml_collections
  cfg = config_lib.defaults().optimizer
  cfg.update(dict(name='sgd', learning_rate=0.1))
  tx, _ = optim.make_optimizer(cfg, 10)
  return Classification(models.create(ml_collections.ConfigDict(model_cfg), 10), tx, 10, **kwargs)


def _batch(n=8, shape=(32, 32, 3), seed=0):
  rng = np.random.default_rng(seed)
  return {'x': rng.normal(size=(n, *shape)).astype(np.float32), 'y': rng.integers(0, 10, n).astype(np.int32),
          'mask': np.ones(n, np.float32)}


def test_batchnorm_statistics_update_in_training_and_are_used_in_eval():
  task = _task({'name': 'resnet', 'depth': 8, 'style': 'cifar'})
  batch = _batch()
  state = task.init(jax.random.PRNGKey(0), batch)
  assert set(state.model_state) == {'batch_stats'}
  variables = {'params': state.params, **state.model_state}
  train_out, _ = task.model.apply(variables, batch['x'], train=True, mutable=['batch_stats'])
  eval_out = task.model.apply(variables, batch['x'], train=False)
  assert not np.allclose(train_out, eval_out, atol=1e-4)  # batch statistics vs running averages
  new_state, _ = jax.jit(task.train_step)(state, batch)
  for old, new in zip(jax.tree.leaves(state.model_state), jax.tree.leaves(new_state.model_state)):
    assert not np.allclose(old, new)
  # Eval reads the running statistics: its loss is the cross-entropy of the train=False logits.
  sums = task.eval_step(new_state, batch)
  new_variables = {'params': new_state.params, **new_state.model_state}
  logits = task.model.apply(new_variables, batch['x'], train=False)
  expected = np.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']) * batch['mask'])
  np.testing.assert_allclose(sums['loss'], expected, rtol=1e-6)
  batch_logits, _ = task.model.apply(new_variables, batch['x'], train=True, mutable=['batch_stats'])
  assert np.abs(batch_logits - logits).max() > 1e-4  # batch statistics would give other logits


def test_standin_cifar10_resnet_trains_end_to_end(tmp_path):
  config = _load('cifar10/resnet20', **{
      'data.name': 'standin', 'data.batch_size': 8, 'data.eval_batch_size': 8, 'model.depth': 8,
      'train.num_steps': 3, 'train.log_every': 1, 'train.eval_every': 3, 'train.checkpoint_every': 3})
  summary = train.train(config, str(tmp_path / 'run'))
  assert summary['step'] == 3 and 0 <= summary['test_accuracy'] <= 1 and 'test_top5_accuracy' in summary
  assert os.path.exists(tmp_path / 'run' / 'confusion_test.png')


# --- regularisers: each switch changes the loss and gradients exactly as its formula says ---

def _loss_and_grads(task, state, batch):
  # jitted: op-by-op convolution gradients take tens of seconds on CPU
  (loss, _), grads = jax.jit(jax.value_and_grad(task._loss, has_aux=True))(state.params, state, batch)
  return loss, grads


@pytest.mark.parametrize('kind', ['l1', 'l2'])
def test_weight_penalty_adds_its_term_to_loss_and_gradient(kind):
  batch = _batch(shape=(28, 28, 1))
  plain = _task({'name': 'lenet5'})
  penalised = _task({'name': 'lenet5'}, **{kind: 0.01})
  state = plain.init(jax.random.PRNGKey(0), batch)
  loss0, grads0 = _loss_and_grads(plain, state, batch)
  loss1, grads1 = _loss_and_grads(penalised, state, batch)
  flat = jax.tree_util.tree_leaves_with_path(state.params)
  kernels = [w for path, w in flat if path[-1].key == 'kernel']
  expected = (0.01 * sum(np.abs(w).sum() for w in kernels) if kind == 'l1'
              else 0.005 * sum(np.square(w).sum() for w in kernels))
  np.testing.assert_allclose(loss1 - loss0, expected, rtol=1e-4)
  for (path, w), g0, g1 in zip(flat, jax.tree.leaves(grads0), jax.tree.leaves(grads1)):
    term = (0.01 * np.sign(w) if kind == 'l1' else 0.01 * w) if path[-1].key == 'kernel' else 0 * w
    np.testing.assert_allclose(g1 - g0, term, atol=1e-6)
  assert float(weight_penalty(state.params, 0.0, 0.0)) == 0.0


def test_dropout_is_random_in_training_and_off_in_eval():
  batch = _batch(shape=(28, 28, 1))
  task = _task({'name': 'cnn', 'channels': (4,), 'hidden': (16,), 'dropout': 0.5})
  state = task.init(jax.random.PRNGKey(0), batch)
  variables = {'params': state.params}
  a = task.model.apply(variables, batch['x'], train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  b = task.model.apply(variables, batch['x'], train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(task.model.apply(variables, batch['x']), task.model.apply(variables, batch['x']))
  no_dropout = _task({'name': 'cnn', 'channels': (4,), 'hidden': (16,), 'dropout': 0.0})
  assert not np.isclose(_loss_and_grads(task, state, batch)[0], _loss_and_grads(no_dropout, state, batch)[0])


def test_label_smoothing_gives_the_smoothed_cross_entropy():
  batch = _batch(shape=(28, 28, 1))
  task = _task({'name': 'mlp', 'hidden': ()}, label_smoothing=0.1)
  state = task.init(jax.random.PRNGKey(0), batch)
  logits = task.model.apply({'params': state.params}, batch['x'])
  logp = jax.nn.log_softmax(logits)
  target = 0.9 * jax.nn.one_hot(batch['y'], 10) + 0.1 / 10
  np.testing.assert_allclose(_loss_and_grads(task, state, batch)[0], -(target * logp).sum(-1).mean(), rtol=1e-5)


def test_weight_decay_and_gradient_clipping_change_the_update():
  cfg = config_lib.defaults().optimizer
  cfg.update(dict(name='sgd', learning_rate=0.5, weight_decay=0.1))
  params = {'w': jnp.array([2.0, -4.0])}
  grads = {'w': jnp.array([30.0, 40.0])}
  tx, _ = optim.make_optimizer(cfg, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.5 * (grads['w'] + 0.1 * params['w']))
  cfg.update(dict(weight_decay=0.0, grad_clip_norm=5.0))
  tx, _ = optim.make_optimizer(cfg, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.5 * np.array([3.0, 4.0]), rtol=1e-6)  # norm 50 clipped to 5
  assert optax.tree.norm(updates) <= 0.5 * 5.0 + 1e-6


def test_augmentation_switches_change_training_batches_only():
  plain = vision.load(vision.data_config('cifar10', name='standin', batch_size=8, eval_batch_size=8), seed=0)
  augmented = vision.load(vision.data_config('cifar10', name='standin', batch_size=8, eval_batch_size=8,
                                             crop_padding=4, flip=True), seed=0)
  assert not np.array_equal(next(plain.train_batches(0))['x'], next(augmented.train_batches(0))['x'])
  np.testing.assert_array_equal(next(plain.eval_batches('test'))['x'], next(augmented.eval_batches('test'))['x'])
