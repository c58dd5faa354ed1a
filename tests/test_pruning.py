"""Magnitude pruning: masks against hand counts, exact zeros through training, checkpoints and resume."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import sigterm_at, tiny_config

from jaxlab.errors import ConfigError
from jaxlab.optim import pruning
from jaxlab.run import program as program_lib
from jaxlab.run import train


def test_magnitude_mask_prunes_the_smallest_by_hand():
  np.testing.assert_array_equal(pruning.magnitude_mask(jnp.array([3., -1, .5, -4, 2]), 0.4), [1, 0, 0, 1, 1])
  np.testing.assert_array_equal(pruning.magnitude_mask(jnp.array([3., -1]), 0.0), [1, 1])


def test_iterative_schedule_ramps_keeps_zeros_and_gives_kept_weights_their_exact_update():
  params = {'a': {'kernel': jnp.arange(1., 9.).reshape(2, 4)}, 'b': {'kernel': jnp.ones(3)}}
  tx = optax.chain(optax.sgd(0.1), pruning.prune_by_magnitude((('^a/', 0.5),), (0, 2)))
  state, rng = tx.init(params), np.random.default_rng(0)
  zeros = []
  for step in range(5):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    kept = np.asarray(state[1].masks['a']['kernel']) > 0  # the chain's second state: pruning's
    plain = optax.apply_updates(params, jax.tree.map(lambda g: -0.1 * g, grads))
    np.testing.assert_array_equal(np.asarray(new['a']['kernel'])[kept], np.asarray(plain['a']['kernel'])[kept])
    np.testing.assert_array_equal(new['b']['kernel'], plain['b']['kernel'])  # no rule: never pruned
    zeros.append(int(np.sum(np.asarray(new['a']['kernel']) == 0)))
    params = new
  # 8 weights: a quarter (half of the target) at step 0, the whole half at step 2, kept at zero in between.
  assert zeros == [2, 2, 4, 4, 4]
  # The smallest magnitudes go first: 1 and 2 at step 0.
  assert np.asarray(params['a']['kernel'])[0, 0] == 0 and np.asarray(params['a']['kernel'])[0, 1] == 0


@pytest.mark.parametrize('kind, zeros', [
    ('linear', [4, 8, 12, 16]),  # 32 weights, target 1/2: 16 * k / 4
    ('cubic', [9, 14, 16, 16]),  # 16 * (1 - (1 - k / 4)^3) = 9.25, 14, 15.75, 16, rounded
])
def test_the_ramp_prunes_that_many_at_each_event_by_hand(kind, zeros):
  params = {'a': {'kernel': jnp.arange(1., 33.).reshape(4, 8)}}
  tx = pruning.prune_by_magnitude((('^a/', 0.5),), (0, 1, 2, 3), kind)
  state, counts = tx.init(params), []
  for _ in range(4):
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
    counts.append(int(np.sum(np.asarray(params['a']['kernel']) == 0)))
  assert counts == zeros


def _config(**overrides):
  return tiny_config('mlp', **{'model.hidden': (16,), 'train.num_steps': 20, 'train.checkpoint_every': 100,
                               'optimizer.prune.sparsity': (('^Dense_0/kernel$', 0.75), ('^head/kernel$', 0.5)),
                               'optimizer.prune.steps': (0, 6), **overrides})


def test_pruned_weights_stay_zero_through_a_resume_and_the_summary_counts_them(tmp_path):
  config = _config()
  whole = train.train(config, str(tmp_path / 'whole'))

  assert train.train(config, str(tmp_path / 'resumed'), hooks=[sigterm_at(8)])['preempted']
  saved = jax.device_get(program_lib.restore_checkpoint(config, str(tmp_path / 'resumed'))[2].params)
  resumed = train.train(config, str(tmp_path / 'resumed'))
  final = jax.device_get(program_lib.restore_checkpoint(config, str(tmp_path / 'resumed'))[2].params)
  straight = jax.device_get(program_lib.restore_checkpoint(config, str(tmp_path / 'whole'))[2].params)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)
  # Dense_0 is 40x16 = 640 weights, 480 pruned; head 16x10 = 160, 80 pruned (by hand).
  for path, pruned, size in (('Dense_0', 480, 640), ('head', 80, 160)):
    zero = np.asarray(final[path]['kernel']) == 0
    assert zero.sum() == pruned
    assert np.all(zero[np.asarray(saved[path]['kernel']) == 0])  # zero at the checkpoint: zero at the end
  assert resumed['nonzeros']['Dense_0/kernel'] == [160, 640] and resumed['nonzeros']['head/kernel'] == [80, 160]
  assert resumed['nonzeros']['Dense_0/bias'] == [int(np.count_nonzero(final['Dense_0']['bias'])), 16]
  assert whole['nonzeros'] == resumed['nonzeros']


@pytest.mark.parametrize('overrides, message', [
    ({'optimizer.prune.sparsity': (('^nothing', 0.5),)}, "prune.sparsity regex '^nothing' matches no parameter"),
    ({'optimizer.prune.sparsity': (('Dense_0', 1.0),)}, "prune.sparsity rule ('Dense_0', 1.0) is not a (regex, fraction"),
    ({'optimizer.prune.steps': ()}, 'prune.sparsity needs prune.steps'),
    ({'optimizer.prune.ramp': 'exp'}, "prune.ramp must be one of linear, cubic, got 'exp'"),
    ({'optimizer.prune.steps': (0, 20)}, 'prune.steps must lie in [0, train.num_steps 20), got (0, 20)'),
])
def test_bad_pruning_settings_are_one_line(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    train.train(_config(**overrides), str(tmp_path))
