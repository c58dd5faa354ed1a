import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax.core import meta

from jaxlab import models
from jaxlab.errors import ConfigError
from jaxlab.tasks.classification import Classification

MODEL_CONFIGS = {
    'logistic': dict(name='mlp', hidden=()),
    'mlp': dict(name='mlp', hidden=(100, 100), residual=True),
    'cnn1d': dict(name='cnn1d', channels=25),
    'gru': dict(name='rnn', cell='gru', hidden=6),
    'lstm_last': dict(name='rnn', cell='lstm', hidden=8, bidirectional=False, readout='last'),
}


def _model(cfg):
  return models.create(ml_collections.ConfigDict(cfg), num_classes=10)


@pytest.mark.parametrize('key', sorted(MODEL_CONFIGS))
def test_output_shape(key):
  model = _model(MODEL_CONFIGS[key])
  x = jnp.ones((3, 40))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(variables, x).shape == (3, 10)


def test_paper_sizes():
  """Parameter counts of the MNIST-1D paper's models (Greydanus 2020, PyTorch definitions)."""
  def count(cfg):
    params = _model(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 40)))['params']
    return sum(x.size for x in jax.tree.leaves(params))
  assert count(MODEL_CONFIGS['logistic']) == 40 * 10 + 10
  assert count(MODEL_CONFIGS['mlp']) == (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
  # conv 1->25 k5, 25->25 k3 twice, stride 2, padding 1: length 40 -> 19 -> 10 -> 5.
  assert count(MODEL_CONFIGS['cnn1d']) == (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (125 * 10 + 10)


@pytest.mark.parametrize('key', ['logistic', 'mlp', 'cnn1d', 'gru'])
def test_loss_decreases_on_a_fixed_batch(key):
  rng = np.random.default_rng(0)
  batch = {'x': jnp.asarray(rng.normal(size=(32, 40)), jnp.float32), 'y': jnp.asarray(rng.integers(0, 10, 32))}
  task = Classification(_model(MODEL_CONFIGS[key]), optax.adam(1e-2), num_classes=10)
  state = task.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(task.train_step)
  state, first = step(state, batch)
  for _ in range(50):
    state, metrics = step(state, batch)
  assert float(metrics['loss']) < 0.5 * float(first['loss'])
  assert int(state.step) == 51


def test_residual_mlp_adds_the_hidden_layer_to_its_input():
  plain, residual = _model(dict(name='mlp', hidden=(4, 4))), _model(dict(name='mlp', hidden=(4, 4), residual=True))
  x = jnp.ones((2, 3))
  variables = meta.unbox(plain.init(jax.random.PRNGKey(0), x))  # same parameter tree for both; plain arrays
  assert not np.allclose(plain.apply(variables, x), residual.apply(variables, x))
  h1 = jax.nn.relu(x @ variables['params']['Dense_0']['kernel'] + variables['params']['Dense_0']['bias'])
  h2 = h1 + jax.nn.relu(h1 @ variables['params']['Dense_1']['kernel'] + variables['params']['Dense_1']['bias'])
  expected = h2 @ variables['params']['head']['kernel'] + variables['params']['head']['bias']
  np.testing.assert_allclose(residual.apply(variables, x), expected, rtol=1e-5)


def test_input_dropout_drops_that_fraction_of_the_pixels_in_training_only():
  model = _model(dict(name='mlp', hidden=(), input_dropout=0.2))  # logistic regression: head only
  x = jnp.ones((1, 10_000))
  variables = meta.unbox(model.init(jax.random.PRNGKey(0), x))
  variables['params']['head'] = {'kernel': jnp.ones((10_000, 10)), 'bias': jnp.zeros(10)}  # each output: sum of inputs
  np.testing.assert_allclose(model.apply(variables, x), 10_000.0)
  kept = float(model.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})[0, 0]) * 0.8
  assert abs(kept - round(kept)) < 1e-2  # whole pixels kept, each scaled by 1 / 0.8
  assert abs(kept - 8000) < 200  # binomial(10,000, 0.8): std 40


def test_matmul_conv_computes_the_same_function_with_the_same_parameters():
  xla, matmul = _model(dict(name='cnn1d', channels=6)), _model(dict(name='cnn1d', channels=6, conv='matmul'))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 40))
  variables = xla.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, matmul.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(matmul.apply(variables, x), xla.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_eval_step_ignores_padding():
  batch = {'x': jnp.ones((4, 40)), 'y': jnp.array([1, 2, 3, 4]), 'mask': jnp.array([1., 1., 0., 0.])}
  task = Classification(_model(MODEL_CONFIGS['mlp']), optax.sgd(0.1), num_classes=10)
  state = task.init(jax.random.PRNGKey(0), batch)
  sums = task.eval_step(state, batch)
  assert float(sums['count']) == 2
  full = task.eval_step(state, {**batch, 'x': batch['x'][:2], 'y': batch['y'][:2], 'mask': jnp.ones(2)})
  np.testing.assert_allclose(sums['loss'], full['loss'], rtol=1e-6)


def test_unknown_model_and_attribute():
  with pytest.raises(ConfigError, match="unknown model.name 'transfomer'"):
    _model(dict(name='transfomer'))
  with pytest.raises(ConfigError, match=r"no attribute\(s\) \['chanels'\]"):
    _model(dict(name='cnn1d', chanels=3))
  with pytest.raises(ConfigError, match="model 'rnn': unknown cell 'grux'; choose from gru, lstm, simple"):
    _model(dict(name='rnn', cell='grux'))


def _count(model, x):
  return sum(p.size for p in jax.tree.leaves(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']))


def test_transformer_parameter_counts():
  """Counted by hand: per block two LayerNorms, qkv (3w^2), the output projection (w^2) and the MLP (8w^2)."""
  gpt = _model(dict(name='gpt', block_size=64, num_layers=4, num_heads=4, width=128, use_bias=False))
  w, layers, vocab = 128, 4, 10  # _model passes num_classes=10 as the GPT's vocab_size
  per_block = 2 * w + 12 * w * w
  # tied embeddings: no output matrix; nanoGPT's CPU config reports 0.80M excluding the 64 x 128 position table
  assert _count(gpt, jnp.zeros((1, 64), jnp.int32)) == vocab * w + 64 * w + layers * per_block + w
  vit = _model(dict(name='vit', patch_size=4, num_layers=2, num_heads=2, width=32))
  w, tokens = 32, 7 * 7 + 1
  per_block = 4 * w + (12 * w * w + 9 * w)  # with biases: LayerNorm scales and offsets, qkv 3w, out w, MLP 4w + w
  expected = (4 * 4 * 1 * w + w) + w + tokens * w + 2 * per_block + 2 * w + (w * 10 + 10)
  assert _count(vit, jnp.zeros((1, 28, 28, 1))) == expected


def test_vit_learns_a_fixed_batch_of_images():
  rng = np.random.default_rng(0)
  batch = {'x': jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32), 'y': jnp.asarray(rng.integers(0, 10, 16))}
  model = _model(dict(name='vit', patch_size=4, num_layers=1, num_heads=2, width=16))
  task = Classification(model, optax.adam(1e-2), num_classes=10)
  state = task.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(task.train_step)
  state, first = step(state, batch)
  for _ in range(60):
    state, metrics = step(state, batch)
  assert float(metrics['loss']) < 0.3 * float(first['loss'])


def test_vit_mean_pooling_reads_every_patch_and_has_no_class_token():
  model = _model(dict(name='vit', patch_size=4, num_layers=1, num_heads=2, width=16, pool='mean'))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  variables = meta.unbox(model.init(jax.random.PRNGKey(0), images))  # plain arrays, not sharding-annotated boxes
  assert 'cls_token' not in variables['params'] and variables['params']['position_embedding'].shape == (4, 16)
  head = variables['params']['head']['kernel']  # zero at init: give it weights, so every input reaches the output
  variables['params']['head']['kernel'] = jax.random.normal(jax.random.PRNGKey(1), head.shape)
  corner = images.at[:, 7, 7, 0].add(1.0)  # a pixel of the last patch only
  assert np.abs(model.apply(variables, corner) - model.apply(variables, images)).max() > 1e-4


@pytest.mark.parametrize('cfg, message', [
    (dict(name='gpt', width=30, num_heads=4), "model 'gpt': width 30 is not divisible by num_heads 4"),
    (dict(name='vit', pool='max'), "model 'vit': unknown pool 'max'; choose from cls, mean"),
    (dict(name='rnn_lm', cell='transformer'), "model 'rnn_lm': unknown cell 'transformer'; choose from gru, lstm, simple"),
    (dict(name='bert', dropout=1.0), "model 'bert': dropout must be in [0, 1), got 1.0"),
])
def test_sequence_models_validate_their_attributes(cfg, message):
  with pytest.raises(ConfigError) as info:
    _model(cfg)
  assert str(info.value) == message


def test_vit_refuses_images_that_do_not_split_into_patches():
  model = _model(dict(name='vit', patch_size=5))
  with pytest.raises(ConfigError, match='images of 28x28 do not split into 5x5 patches'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
