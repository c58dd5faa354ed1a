"""Max-norm constraint: the projection by hand, its place in the optimizer chain, and a trained model that obeys it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from jaxlab import optim
from jaxlab.errors import ConfigError
from jaxlab.optim.max_norm import max_norm, project
from jaxlab.run import program as program_lib
from jaxlab.run import train


def _unit_norms(kernel) -> np.ndarray:
  kernel = np.asarray(kernel)
  return np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)


def test_projection_scales_only_the_long_incoming_vectors_by_hand():
  kernel = jnp.array([[3., 0.], [4., 1.]])  # unit 0's incoming weights have norm 5, unit 1's norm 1
  np.testing.assert_allclose(project(kernel, 2.5), [[1.5, 0.], [2., 1.]])
  conv = jnp.ones((3, 3, 2, 4)) * jnp.array([1., 2., .1, 3.])  # per output filter: norms sqrt(18) * (1, 2, .1, 3)
  np.testing.assert_allclose(_unit_norms(project(conv, 6.)), [np.sqrt(18), 6., .1 * np.sqrt(18), 6.], rtol=1e-6)


def test_the_step_lands_on_the_projection_and_biases_are_free():
  params = {'Dense_0': {'kernel': jnp.array([[1., 0.], [0., 1.]]), 'bias': jnp.array([0., 0.])}}
  grads = {'Dense_0': {'kernel': jnp.array([[-30., 0.], [-40., 0.]]), 'bias': jnp.array([-50., 0.])}}
  tx = optax.chain(optax.sgd(0.1), max_norm(2.0))
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # SGD alone: unit 0's column (1, 0) + (3, 4) = (4, 4), norm 4 sqrt(2) -> (sqrt 2, sqrt 2); unit 1 stays (0, 1).
  np.testing.assert_allclose(new['Dense_0']['kernel'], [[np.sqrt(2), 0.], [np.sqrt(2), 1.]], rtol=1e-6)
  np.testing.assert_allclose(new['Dense_0']['bias'], [5., 0.])


def _config(**overrides):
  return tiny_config('mlp', **{'model.hidden': (16,), 'train.num_steps': 15, 'train.checkpoint_every': 100,
                               'optimizer.learning_rate': 0.05, **overrides})


def test_a_trained_model_keeps_every_unit_within_the_limit_and_frozen_layers_as_loaded(tmp_path):
  free = train.train(_config(), str(tmp_path / 'free'))
  unconstrained = jax.device_get(program_lib.restore_checkpoint(_config(), str(tmp_path / 'free'))[2].params)
  limit = 0.5 * float(np.max(_unit_norms(unconstrained['Dense_0']['kernel'])))  # binds on some units
  config = _config(**{'optimizer.max_norm': limit})
  train.train(config, str(tmp_path / 'capped'))
  capped = jax.device_get(program_lib.restore_checkpoint(config, str(tmp_path / 'capped'))[2].params)
  for layer in ('Dense_0', 'head'):
    assert np.all(_unit_norms(capped[layer]['kernel']) <= limit * (1 + 1e-5))
  assert np.isclose(np.max(_unit_norms(capped['Dense_0']['kernel'])), limit, rtol=1e-5)  # the limit was reached
  assert np.isfinite(free['test_loss'])

  # A frozen layer gets no update, max-norm included, even where it is longer than the limit.
  frozen = _config(**{'optimizer.max_norm': 1e-3, 'optimizer.frozen': '^Dense_0/'})
  tx, _ = optim.make_optimizer(frozen.optimizer, 15)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, unconstrained), tx.init(unconstrained), unconstrained)
  np.testing.assert_array_equal(updates['Dense_0']['kernel'], 0)
  assert np.all(_unit_norms(optax.apply_updates(unconstrained, updates)['head']['kernel']) <= 1e-3 * (1 + 1e-4))


def test_a_negative_limit_is_one_line():
  with pytest.raises(ConfigError, match=r'optimizer.max_norm must be > 0 \(0 turns it off\), got -1.0'):
    optim.make_optimizer(_config(**{'optimizer.max_norm': -1.0}).optimizer, 15)
