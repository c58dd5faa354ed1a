import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

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
  variables = plain.init(jax.random.PRNGKey(0), x)  # same parameter tree for both
  assert not np.allclose(plain.apply(variables, x), residual.apply(variables, x))
  h1 = jax.nn.relu(x @ variables['params']['Dense_0']['kernel'] + variables['params']['Dense_0']['bias'])
  h2 = h1 + jax.nn.relu(h1 @ variables['params']['Dense_1']['kernel'] + variables['params']['Dense_1']['bias'])
  expected = h2 @ variables['params']['Dense_2']['kernel'] + variables['params']['Dense_2']['bias']
  np.testing.assert_allclose(residual.apply(variables, x), expected, rtol=1e-5)


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
