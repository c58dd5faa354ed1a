"""Parameter sharding from logical axis rules, gradient accumulation, rematerialisation, mixed precision, FLOPs."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tiny_config, tiny_lm_config
from jax.sharding import PartitionSpec as P

from jaxlab import config as config_lib
from jaxlab import data, models, tasks
from jaxlab.errors import ConfigError
from jaxlab.parallel import flops, sharding
from jaxlab.run import accumulate, train
from jaxlab.run import program as program_lib
from jaxlab.tasks.base import init_state

RULES = sharding.rules_from_config(config_lib.defaults().sharding_rules)
MESH = {'data': 1, 'fsdp': 8, 'tensor': 2}


def _gpt_task(corpus, tmp_path, **overrides):
  config = tiny_lm_config(corpus, **{'model.width': 32, 'model.num_heads': 4, 'model.num_layers': 2, **overrides})
  source = data.make_source(config.data, 0, str(tmp_path))
  return config, source, tasks.make(config, source)


def _specs(task, example, mesh=MESH, rules=RULES):
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0), example)
  return abstract, sharding.state_specs(abstract, task.param_axes(example), mesh, rules)


def test_gpt_parameters_follow_the_rules_and_adam_moments_follow_the_parameters(corpus, tmp_path):
  _, source, task = _gpt_task(corpus, tmp_path)
  _, specs = _specs(task, source.example_batch())
  block = specs.params['encoder']['block_0']
  assert block['attention']['qkv']['kernel'] == P('fsdp', None, 'tensor', None)  # (embed, 3, heads, kv)
  assert block['attention']['out']['kernel'] == P('tensor', None, 'fsdp')  # (heads, kv, embed)
  assert block['mlp_in']['kernel'] == P('fsdp', 'tensor') and block['mlp_out']['kernel'] == P('tensor', 'fsdp')
  assert specs.params['token_embedding']['embedding'] == P(None, 'fsdp')  # the vocabulary (65) is not split
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  [adam] = [x for x in jax.tree.leaves(specs.opt_state, is_leaf=is_adam) if is_adam(x)]
  assert adam.mu == specs.params and adam.nu == specs.params and adam.count == P()
  assert specs.step == P() and specs.rng == P()


def test_mlp_and_resnet_take_the_same_rules():
  mlp = models.create(ml_collections.ConfigDict({'name': 'mlp', 'hidden': (64, 64)}), 10)
  logical = sharding.param_axes(mlp, jnp.zeros((2, 40)))
  specs = sharding.param_specs(jax.eval_shape(lambda: init_state(mlp, optax.sgd(1), jax.random.PRNGKey(0),
                                                                 jnp.zeros((2, 40))).params), logical, MESH, RULES)
  # Megatron's alternation: column-parallel, row-parallel, then the classifier.
  assert [specs[name]['kernel'] for name in ('Dense_0', 'Dense_1', 'head')] == [P('fsdp', 'tensor'), P('tensor', 'fsdp'),
                                                                P('fsdp', None)]
  resnet = models.create(ml_collections.ConfigDict({'name': 'resnet', 'depth': 8}), 10)
  x = jnp.zeros((2, 8, 8, 3))
  params = jax.eval_shape(lambda: init_state(resnet, optax.sgd(1), jax.random.PRNGKey(0), x).params)
  specs = sharding.param_specs(params, sharding.param_axes(resnet, x), MESH, RULES)
  convs = [conv['kernel'] for conv in _find(specs, 'Conv')]
  assert convs and all(spec == P(None, None, None, 'fsdp') for spec in convs)  # output channels over fsdp
  assert specs['head']['kernel'] == P('fsdp', None)


def _find(tree, prefix):
  """Every dict under `tree` whose key starts with `prefix`."""
  found = []
  for key, value in tree.items():
    if key.startswith(prefix):
      found.append(value)
    elif isinstance(value, dict):
      found += _find(value, prefix)
  return found


def test_a_rule_to_an_unknown_mesh_axis_or_an_indivisible_dimension_is_one_line_naming_the_parameter(corpus, tmp_path):
  _, source, task = _gpt_task(corpus, tmp_path, **{'model.width': 36})  # 36 = 4 heads x 9
  example = source.example_batch()
  with pytest.raises(ConfigError, match=r"parameter encoder/block_0/attention/out/kernel of shape \(4, 9, 36\): "
                                        r"dimension 2 \('embed', 36\) is not divisible by the 8 devices of mesh axis fsdp"):
    _specs(task, example)
  with pytest.raises(ConfigError, match=r"sharding_rules map 'embed' to mesh axis 'model', which is not one of "
                                        r"\['data', 'fsdp', 'tensor'\] \(parameter encoder/block_0/attention/out/kernel"):
    _specs(task, example, rules=(('embed', 'model'),))
  with pytest.raises(ConfigError, match="sharding_rules map 'unused' to mesh axis 'model'"):
    _specs(task, example, mesh={'data': 1, 'fsdp': 1, 'tensor': 1}, rules=RULES + (('unused', 'model'),))
  config = tiny_lm_config(corpus, **{'sharding_rules': (('embed', 'fsdp', 'tensor'),)})
  with pytest.raises(ConfigError, match=r"sharding_rules entry \('embed', 'fsdp', 'tensor'\) is not"):
    train.train(config, str(tmp_path / 'run'))


def test_grad_accumulation_is_the_update_of_one_batch_k_times_larger(tmp_path):
  # SGD: the update is the gradient itself (Adam's would hide a wrongly scaled gradient).
  config = tiny_config(name='mlp', **{'data.batch_size': 40, 'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.5})
  source = data.make_source(config.data, 0)
  task = tasks.make(config, source)
  batch = next(source.train_batches(0))
  state = task.init(jax.random.PRNGKey(0), batch)
  one, metrics_one = jax.jit(task.train_step)(state, batch)
  four, metrics_four = jax.jit(accumulate.Accumulating(task, 4).train_step)(state, batch)
  assert int(four.step) == 1
  for a, b, start in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), jax.tree.leaves(state.params)):
    assert not np.allclose(a, start)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for key in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(metrics_one[key], metrics_four[key], rtol=1e-5)
  # Micro-batch i holds examples i, i+k, ...: each device's slice of the batch has a share of each.
  np.testing.assert_array_equal(accumulate.micro_batches({'x': np.arange(8)}, 4)['x'], [[0, 4], [1, 5], [2, 6], [3, 7]])


def test_grad_accumulation_through_the_loop_and_its_batch_check(tmp_path):
  summaries = [train.train(tiny_config(name='mlp', **{'train.num_steps': 3, 'train.eval_every': 3, 'optimizer.name': 'sgd',
                                                      'optimizer.learning_rate': 0.5, 'train.grad_accum_steps': k}),
                           str(tmp_path / f'k{k}')) for k in (1, 2)]
  assert abs(summaries[0]['test_loss'] - summaries[1]['test_loss']) < 1e-5
  with pytest.raises(ConfigError, match='data.batch_size 40 is not divisible by the 1 devices of the data and fsdp '
                                        'axes times train.grad_accum_steps 3'):
    train.train(tiny_config(name='mlp', **{'train.grad_accum_steps': 3}), str(tmp_path / 'k3'))


def _gpt_grads(corpus, tmp_path, **overrides):
  """Gradients, metrics, and the bytes of activations kept for the backward pass (the VJP's residuals)."""
  config, source, task = _gpt_task(corpus, tmp_path, **{'data.batch_size': 16, 'data.block_size': 64,
                                                        'model.block_size': 64, 'model.num_layers': 4, **overrides})
  batch = next(source.train_batches(0))
  state = task.init(jax.random.PRNGKey(0), batch)
  _, backward = jax.vjp(lambda p: task._loss(p, state, batch)[0], state.params)
  grads, metrics, _ = jax.jit(task.gradients)(state, batch)
  return grads, metrics, sum(x.nbytes for x in jax.tree.leaves(backward))


def test_remat_gives_the_same_gradients_and_keeps_fewer_activations(corpus, tmp_path):
  grads, metrics, kept = _gpt_grads(corpus, tmp_path)
  kept_by_policy = {}
  for policy in ('full', 'dots'):
    again, metrics_again, kept_by_policy[policy] = _gpt_grads(corpus, tmp_path, **{'model.remat': policy})
    np.testing.assert_allclose(metrics['loss'], metrics_again['loss'], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(again)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  # Full: only each block's input is kept; dots: also the matmul outputs; none: everything.
  assert kept_by_policy['full'] < kept_by_policy['dots'] < kept / 2
  with pytest.raises(ConfigError, match="unknown remat 'some'"):
    _gpt_task(corpus, tmp_path, **{'model.remat': 'some'})


def test_bfloat16_compute_keeps_float32_parameters_and_logits(corpus, tmp_path):
  _, source, f32 = _gpt_task(corpus, tmp_path)
  _, _, bf16 = _gpt_task(corpus, tmp_path, **{'model.dtype': 'bfloat16'})
  batch = source.example_batch()
  state = bf16.init(jax.random.PRNGKey(0), batch)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}
  apply = lambda task: (lambda p: task.model.apply({'params': p}, batch['x']))
  assert apply(bf16)(state.params).dtype == jnp.float32
  assert 'bf16[' in str(jax.make_jaxpr(apply(bf16))(state.params)) and 'bf16[' not in str(
      jax.make_jaxpr(apply(f32))(state.params))
  loss = lambda task: float(task.gradients(state, batch)[1]['loss'])
  assert abs(loss(bf16) - loss(f32)) < 0.01 * loss(f32)


def test_flops_per_token_is_six_n_plus_twelve_l_t_d_counted_by_hand(corpus, tmp_path):
  config, source, task = _gpt_task(corpus, tmp_path)  # no biases, tied embeddings
  params = task.init(jax.random.PRNGKey(0), source.example_batch()).params
  v, d, layers, t = source.num_classes, 32, 2, config.data.block_size
  n = v * d + layers * (12 * d * d + 2 * d) + d  # tokens (as output layer), qkv+out+mlp, 2 LayerNorms; final LN
  assert task.flops_per_step(params) == config.data.batch_size * t * (6 * n + 12 * layers * t * d)
  assert flops.peak_per_device('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert flops.peak_per_device('TPU v5 lite', 'bfloat16') == 197e12
  assert flops.peak_per_device('cpu', 'float32') is None


def test_lm_runs_log_tflops_and_mfu(corpus, tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_lm_config(corpus, **{'train.peak_flops': 1e9})  # a made-up chip: MFU = achieved / 1 GFLOP/s
  d, layers, t = config.model.width, config.model.num_layers, config.data.block_size
  v = len(set(open(corpus).read()))
  train_flops_per_token = 6 * (v * d + layers * (12 * d * d + 2 * d) + d) + 12 * layers * t * d
  train.train(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [m for m in map(json.loads, f) if m['split'] == 'train']
  assert len(lines) == 4
  for m in lines:
    assert m['tflops_per_sec'] == pytest.approx(m['tokens_per_sec'] * train_flops_per_token / 1e12)
    assert m['mfu'] == pytest.approx(m['tflops_per_sec'] * 1e12 / 1e9)


def test_bench_reports_the_compiled_steps_memory(corpus, tmp_path):
  from jaxlab.evaluators import bench
  config, source, task = _gpt_task(corpus, tmp_path)
  state_bytes = sharding.total_bytes(jax.eval_shape(task.init, jax.random.PRNGKey(0), source.example_batch()))
  batch_bytes = 2 * config.data.batch_size * config.data.block_size * 4  # x and y, int32
  stats = program_lib.compiled_memory(config)
  # The step's arguments: the state, the batch and the small metric totals.
  assert state_bytes + batch_bytes <= stats.argument_size_in_bytes <= state_bytes + batch_bytes + 1024
  assert stats.temp_size_in_bytes > 0
  assert bench.format_memory(stats).startswith('compiled train step, per device: arguments ')
