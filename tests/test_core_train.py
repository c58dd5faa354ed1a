import json
import math
import os
import signal

import jax
import numpy as np
import optax
import pytest
from conftest import sigterm_at, tiny_config

from jaxlab.errors import ConfigError, NonFiniteLossError
from jaxlab.run import checkpoint, train


def _params(workdir, step):
  """Params saved at `step`, restored without a target (as host arrays)."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)['params']


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_interrupted_and_resumed_run_ends_bitwise_identical(tmp_path):
  config = tiny_config(**{'train.num_steps': 24, 'train.checkpoint_every': 100, 'model.channels': 8})
  straight = str(tmp_path / 'straight')
  train.train(config, straight)

  resumed = str(tmp_path / 'resumed')
  first = train.train(config, resumed, hooks=[sigterm_at(9)])
  assert first['preempted'] and first['step'] == 10  # saved at the step after the signal
  assert checkpoint.Checkpointer(os.path.join(resumed, 'checkpoints'), 3).all_steps() == [10]
  second = train.train(config, resumed)
  assert second['step'] == 24 and second['steps_trained'] == 14
  _assert_trees_equal(_params(straight, 24), _params(resumed, 24))
  with open(os.path.join(straight, 'summary.json')) as f:
    assert second['test_accuracy'] == json.load(f)['test_accuracy']


def test_sigterm_handler_is_restored_after_training(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  train.train(tiny_config(**{'train.num_steps': 2}), str(tmp_path / 'run'))
  assert signal.getsignal(signal.SIGTERM) is before


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # SGD with an absurd learning rate: finite for the first steps, then overflows.
  config = tiny_config(**{'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e12, 'train.num_steps': 200,
                          'train.log_every': 1, 'train.checkpoint_every': 1, 'model.name': 'mlp'})
  config.unlock()
  config.model = {'name': 'mlp', 'hidden': (32,)}
  workdir = str(tmp_path / 'run')
  with pytest.raises(NonFiniteLossError, match=r'loss is (nan|inf|-inf) at step (\d+)') as info:
    train.train(config, workdir)
  bad_step = int(info.value.args[0].split(' at step ')[1].split(';')[0])
  steps = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).all_steps()
  assert steps and max(steps) < bad_step
  assert f'step {max(steps)}' in str(info.value)
  params = _params(workdir, max(steps))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('name', ['sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'rmsprop'])
def test_each_optimizer_reduces_the_loss(tmp_path, name):
  lr = {'sgd': 0.5, 'momentum': 0.05, 'nesterov': 0.05, 'rmsprop': 3e-3}.get(name, 1e-2)
  config = tiny_config(**{'optimizer.name': name, 'optimizer.learning_rate': lr, 'optimizer.weight_decay': 1e-4,
                          'optimizer.grad_clip_norm': 1.0, 'optimizer.schedule': 'cosine',
                          'optimizer.warmup_steps': 5, 'train.num_steps': 60, 'train.log_every': 10,
                          'train.eval_every': 0, 'train.checkpoint_every': 0})
  workdir = str(tmp_path / name)
  train.train(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train_losses = [r['loss'] for r in records if r['split'] == 'train']
  assert train_losses[-1] < 0.8 * train_losses[0]
  lrs = [r['learning_rate'] for r in records if r['split'] == 'train']
  assert 0.95 * lr < lrs[0] <= lr  # step 10: warm-up over, cosine just started
  assert lrs[-1] < 0.01 * lr  # cosine decays to ~0 at the end


def test_a_mesh_that_does_not_fit_the_devices_is_refused(tmp_path):
  with pytest.raises(ConfigError, match='mesh'):
    train.train(tiny_config(**{'mesh.tensor': 3}), str(tmp_path / 'run'))


def test_batch_size_must_divide_over_the_data_axis(tmp_path):
  """Two simulated devices, so the mesh fits and the batch-size check itself is what fires."""
  from conftest import launch
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  proc = launch('--config.data.batch_size=45', f'--workdir={tmp_path / "run"}', env=env)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip() == 'error: data.batch_size 45 is not divisible by the 2 devices of the data and fsdp axes'


def test_schedule_choices():
  from jaxlab import optim
  config = tiny_config(**{'optimizer.schedule': 'step', 'optimizer.learning_rate': 1.0})
  schedule = optim.make_schedule(config.optimizer, 100)
  assert [float(schedule(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, .1, .1, .01, .01])
  config = tiny_config(**{'optimizer.schedule': 'linear', 'optimizer.warmup_steps': 10, 'optimizer.learning_rate': 1.0})
  schedule = optim.make_schedule(config.optimizer, 110)
  assert [float(schedule(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx([0, .5, 1, .5, 0])
  with pytest.raises(ConfigError, match='unknown optimizer.schedule'):
    optim.make_schedule(tiny_config(**{'optimizer.schedule': 'cosin'}).optimizer, 10)


def test_resumed_run_drops_the_metrics_logged_after_its_checkpoint(tmp_path):
  """A run killed after logging past its last checkpoint logs those steps again on resume: once each."""
  from jaxlab.observe.logging import MetricWriter
  lines = [json.dumps({'step': s, 'split': 'train', 'loss': 1.0}) + '\n' for s in (2, 4, 6, 8)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(lines) + '{"step": 1')  # the last line cut by the kill
  writer = MetricWriter(str(tmp_path), start_step=4)
  writer.write(6, 'train', {'loss': 0.5})
  writer.close()
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['step'], r['loss']) for r in records] == [(2, 1.0), (4, 1.0), (6, 0.5)]


def test_rmsprop_has_no_momentum_unless_asked_for():
  """`optimizer.momentum` (0.9, for momentum/nesterov) must not leak into rmsprop."""
  import optax

  from jaxlab import config as config_lib
  from jaxlab import optim
  cfg = config_lib.defaults().optimizer
  cfg.name, cfg.learning_rate = 'rmsprop', 0.1
  params, grads = {'w': np.ones(3, np.float32)}, {'w': np.array([1.0, -2.0, 0.5], np.float32)}

  def two_updates(tx):
    state = tx.init(params)
    first, state = tx.update(grads, state, params)
    return tx.update(grads, state, params)[0]['w']

  plain = optax.rmsprop(0.1, decay=cfg.decay, eps=cfg.eps)
  np.testing.assert_allclose(two_updates(optim.make_optimizer(cfg, 10)[0]), two_updates(plain), rtol=1e-6)
  cfg.rmsprop_momentum = 0.9
  with_momentum = optax.rmsprop(0.1, decay=cfg.decay, eps=cfg.eps, momentum=0.9)
  np.testing.assert_allclose(two_updates(optim.make_optimizer(cfg, 10)[0]), two_updates(with_momentum), rtol=1e-6)
  assert not np.allclose(two_updates(plain), two_updates(with_momentum))


def test_each_step_draws_new_dropout_masks_from_the_step():
  """fold_in(rng, step): with a zero learning rate the parameters never change, yet the training loss
  of the same batch differs from step to step because the dropout masks do."""
  from jaxlab import models
  from jaxlab.tasks.classification import Classification
  config = tiny_config(**{'model.name': 'mlp'})
  config.unlock()
  config.model = {'name': 'mlp', 'hidden': (64,), 'dropout': 0.5}
  task = Classification(models.create(config.model, 10), optax.sgd(0.0), num_classes=10)
  batch = {'x': np.random.default_rng(0).normal(size=(32, 40)).astype(np.float32), 'y': np.arange(32) % 10}
  state = task.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(task.train_step)
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert len(set(losses)) == 3
  # And the mask is a function of (rng, step) only: step 1 from the initial state again gives the same loss.
  again = jax.jit(task.train_step)(task.init(jax.random.PRNGKey(0), batch), batch)[1]['loss']
  assert float(again) == losses[0]


@pytest.mark.parametrize('name', ['sgd', 'adam', 'adamw'])
def test_the_optimizer_applies_the_scheduled_rate_at_every_step(name):
  """With a constant gradient c, SGD moves by -lr_t * c and Adam by -lr_t * sign(c) (m/sqrt(v) = sign(c)):
  the rate each update used is read off the parameters and compared with the schedule's formula."""
  from jaxlab import optim
  config = tiny_config(**{'optimizer.name': name, 'optimizer.schedule': 'linear', 'optimizer.learning_rate': 0.5,
                          'optimizer.final_lr_fraction': 0.1, 'optimizer.eps': 1e-12})
  tx, _ = optim.make_optimizer(config.optimizer, 10)
  c = np.array([0.5, -2.0, 3.0], np.float32)
  params = np.zeros(3, np.float32)
  state = tx.init(params)
  for t in range(10):
    updates, state = tx.update(c, state, params)
    expected_lr = 0.5 + (0.05 - 0.5) * t / 10  # linear from lr to lr * final_lr_fraction over 10 steps
    direction = c if name == 'sgd' else np.sign(c)
    np.testing.assert_allclose(np.asarray(updates), -expected_lr * direction, rtol=1e-4)  # rates differ by ~9 % a step
    params = optax.apply_updates(params, updates)
    assert float(optim.learning_rates(state)['learning_rate']) == pytest.approx(expected_lr, rel=1e-6)


def test_the_logged_learning_rate_is_the_one_the_optimizer_used(tmp_path):
  config = tiny_config(**{'optimizer.schedule': 'cosine', 'optimizer.learning_rate': 0.02, 'train.num_steps': 20,
                          'train.log_every': 5})
  train.train(config, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    logged = {r['step']: r['learning_rate'] for r in map(json.loads, f) if r['split'] == 'train'}
  # The update of step s (1-based) used the rate of optimizer count s - 1: 0.5 lr (1 + cos(pi (s-1) / N)).
  assert logged == pytest.approx({s: 0.01 * (1 + math.cos(math.pi * (s - 1) / 20)) for s in (5, 10, 15, 20)},
                                 rel=1e-5)


def _logged(workdir, split='train'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r for r in map(json.loads, f) if r['split'] == split}


def test_several_steps_per_call_end_at_every_log_and_checkpoint_and_train_the_same(tmp_path):
  settings = {'train.num_steps': 23, 'train.log_every': 10, 'train.eval_every': 0, 'train.checkpoint_every': 7,
              'train.keep_checkpoints': 10}
  one = train.train(tiny_config('mlp', **settings), str(tmp_path / 'one'))
  calls = []
  five = train.train(tiny_config('mlp', **settings, **{'train.steps_per_call': 5}), str(tmp_path / 'five'),
                     hooks=[lambda step, state: calls.append(step)])
  # Calls of up to 5 steps, cut at the log steps 10, 20, the checkpoint steps 7, 14, 21 and the last, 23.
  assert calls == [5, 7, 10, 14, 19, 20, 21, 23]
  assert checkpoint.Checkpointer(str(tmp_path / 'five' / 'checkpoints'), 10).all_steps() == [7, 14, 21, 23]
  logged_one, logged_five = _logged(str(tmp_path / 'one')), _logged(str(tmp_path / 'five'))
  assert sorted(logged_five) == sorted(logged_one) == [7, 10, 14, 20, 21, 23]  # log steps, and each save logs
  for step in logged_one:  # means over the same steps' losses
    assert logged_five[step]['loss'] == pytest.approx(logged_one[step]['loss'], rel=1e-5)
  for a, b in zip(jax.tree.leaves(_params(str(tmp_path / 'one'), 23)), jax.tree.leaves(_params(str(tmp_path / 'five'), 23))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert five['test_accuracy'] == pytest.approx(one['test_accuracy'], abs=1e-3)


def test_several_steps_per_call_stack_each_replicas_batches(tmp_path):
  settings = {'train.num_steps': 8, 'train.log_every': 4, 'train.eval_every': 8, 'train.checkpoint_every': 8,
              'num_replicas': 2}
  for k in (1, 3):  # calls of 3 and 1 steps, twice: batches stacked (3, replicas, batch, ...)
    train.train(tiny_config('mlp', **settings, **{'train.steps_per_call': k}), str(tmp_path / str(k)))
  one, three = (_params(str(tmp_path / str(k)), 8) for k in (1, 3))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(three), strict=True):
    assert a.shape[0] == 2 and not np.allclose(a[0], a[1])  # two replicas, each its own
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_several_steps_per_call_resume_bitwise_after_sigterm(tmp_path):
  config = tiny_config('mlp', **{'train.num_steps': 24, 'train.checkpoint_every': 100, 'train.steps_per_call': 3})
  train.train(config, str(tmp_path / 'straight'))
  # Calls end at 3, 5, 8, 10 (log_every 5, steps_per_call 3): a signal after step 8 stops the run at the next end.
  first = train.train(config, str(tmp_path / 'resumed'), hooks=[sigterm_at(8)])
  assert first['preempted'] and first['step'] == 10
  assert train.train(config, str(tmp_path / 'resumed'))['steps_trained'] == 14
  _assert_trees_equal(_params(str(tmp_path / 'straight'), 24), _params(str(tmp_path / 'resumed'), 24))


def test_steps_per_call_must_be_positive(tmp_path):
  with pytest.raises(ConfigError, match='train.steps_per_call must be >= 1, got 0'):
    train.train(tiny_config(**{'train.steps_per_call': 0}), str(tmp_path / 'run'))
