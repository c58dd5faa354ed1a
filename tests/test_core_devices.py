"""The same config on 1 and on 8 (simulated CPU) devices gives the same parameters."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

TRAIN_AND_DUMP = '''
import sys, jax, numpy as np
sys.path.insert(0, {tests!r})
from conftest import tiny_config, tiny_lm_config, write_corpus
from jaxlab.run import train
assert jax.device_count() == {devices}, jax.devices()
settings = {{'train.num_steps': 12, 'train.eval_every': 6, 'data.batch_size': 48}}
if {name!r} == 'gpt':
  config = tiny_lm_config(write_corpus({corpus!r}), **settings, **{{'data.eval_batch_size': 40}})
else:
  config = tiny_config(name={name!r}, **settings, **{{'data.eval_batch_size': 200}})
summary = train.train(config, {workdir!r}, hooks=[lambda step, state: step == 12 and np.savez(
    {out!r}, *[np.asarray(x) for x in jax.tree.leaves(state.params)])])
print('METRIC', summary['validation_loss' if {name!r} == 'gpt' else 'test_accuracy'])
'''


def _run(tmp_path, devices: int, name: str) -> tuple[list[np.ndarray], float]:
  out = str(tmp_path / f'{name}-{devices}.npz')
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}
  code = TRAIN_AND_DUMP.format(tests=os.path.join(ROOT, 'tests'), devices=devices, name=name,
                               workdir=str(tmp_path / f'{name}-{devices}'), out=out, corpus=str(tmp_path / 'corpus.txt'))
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"mesh {{'data': {devices}, 'fsdp': 1, 'tensor': 1}}" in proc.stdout
  metric = float(proc.stdout.split('METRIC')[1].split()[0])
  with np.load(out) as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))], metric


@pytest.mark.parametrize('name', ['cnn', 'gru', 'gpt'])
def test_one_and_eight_devices_agree(tmp_path, name):
  one, metric_one = _run(tmp_path, 1, name)
  eight, metric_eight = _run(tmp_path, 8, name)
  assert len(one) == len(eight)
  for a, b in zip(one, eight):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if name == 'gpt':  # validation loss over 40 fixed windows
    assert abs(metric_one - metric_eight) <= 1e-5 * metric_one
  else:
    assert abs(metric_one - metric_eight) <= 0.005  # at most one of 200 test examples flips


def test_prefetch_places_batches_on_the_mesh_in_order_and_reads_only_size_ahead():
  import jax

  from jaxlab import parallel
  mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  sharding = parallel.batch_sharding(mesh)
  read = []

  def source():
    for i in range(5):
      read.append(i)
      yield {'x': np.full((4, 3), i, np.float32), 'y': np.arange(4) + i}

  batches = parallel.prefetch_to_devices(source(), sharding, size=2)
  first = next(batches)
  assert read == [0, 1, 2]  # the batch handed out and two more already on their way
  assert isinstance(first['x'], jax.Array) and first['x'].sharding == sharding
  rest = list(batches)
  assert [int(b['x'][0, 0]) for b in [first, *rest]] == [0, 1, 2, 3, 4]
  np.testing.assert_array_equal(rest[-1]['y'], np.arange(4) + 4)


LONG_QUEUE = '''
import sys, jax
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from jaxlab.run import train
assert jax.device_count() == 2
config = tiny_config(**{{'train.num_steps': 3000, 'train.log_every': 1000, 'train.eval_every': 0,
                        'train.checkpoint_every': 0, 'model.channels': 8}})
print('STEP', train.train(config, {workdir!r})['step'])
'''


def test_two_cpu_devices_survive_a_long_queue_of_steps(tmp_path):
  """Without a bound on queued steps, 2 CPU devices aborted in an all-reduce rendezvous (XLA:CPU)."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  code = LONG_QUEUE.format(tests=os.path.join(ROOT, 'tests'), workdir=str(tmp_path / 'run'))
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and 'STEP 3000' in proc.stdout, proc.stderr[-2000:]
