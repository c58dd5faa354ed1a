"""The GPT on 8 simulated CPU devices under four meshes trains like on 1 device; memory per device;
checkpoints resume under another mesh."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_lm_config, write_corpus

from jaxlab.run import checkpoint, train
from jaxlab.run import program as program_lib

MESHES = {'data8': {'data': 8}, 'fsdp8': {'data': 1, 'fsdp': 8}, 'data2_fsdp2_tensor2': {'data': 2, 'fsdp': 2, 'tensor': 2},
          'tensor4_data2': {'data': 2, 'tensor': 4}}
SETTINGS = {'model.width': 32, 'model.num_heads': 4, 'model.num_layers': 2, 'train.num_steps': 50,
            'data.batch_size': 16, 'data.eval_batch_size': 40, 'train.eval_every': 50, 'train.checkpoint_every': 25,
            'train.log_every': 25, 'sample.num_samples': 0}
SAMPLING_MESH = 'data2_fsdp2_tensor2'  # the one mesh that also generates text (a decode compile per mesh is costly)
LOSS_RTOL = 1e-5  # validation loss (40 fixed windows) after 50 steps, relative to the 1-device run

ON_EIGHT_DEVICES = '''
import json, shutil, sys, jax, numpy as np
sys.path.insert(0, {tests!r})
from test_sharding_devices import MESHES, SETTINGS, config, dump, restore, cut_at
from jaxlab.run import train
assert jax.device_count() == 8
root, results = {root!r}, {{}}
for name, mesh in MESHES.items():
  per_device = {{}}
  def measure(step, state):
    if step == 50:  # bytes on each device, read off the arrays themselves
      for x in jax.tree.leaves(state):
        for shard in x.addressable_shards:
          per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
  summary = train.train(config(mesh), f'{{root}}/{{name}}', hooks=[
      dump(f'{{root}}/{{name}}_25.npz', 25), dump(f'{{root}}/{{name}}.npz', 50), measure])
  results[name] = {{**summary, 'measured_bytes_per_device': max(per_device.values())}}
# Saved under tensor 4 x data 2 at step 25, resumed under fsdp 8 (fsdp 8 -> 1 device: in the test).
resumed = cut_at(f'{{root}}/tensor4_data2', f'{{root}}/resumed_tensor4_data2', 25)
results['restored_shard_shape'] = restore(config(MESHES['fsdp8']), resumed, f'{{root}}/tensor4_data2_25.npz')
results['resumed'] = train.train(config(MESHES['fsdp8']), resumed)
print('RESULTS', json.dumps(results))
'''


def config(mesh=None):
  settings = {**SETTINGS, **{f'mesh.{axis}': size for axis, size in (mesh or {}).items()}}
  if mesh == MESHES[SAMPLING_MESH]:
    settings['sample.num_samples'] = 1
  return tiny_lm_config(write_corpus(os.environ['CORPUS']), **settings)


def cut_at(workdir, copy, step):
  """A copy of `workdir` as a crash right after the checkpoint of `step` would have left it."""
  shutil.copytree(workdir, copy)
  for saved in os.listdir(os.path.join(copy, 'checkpoints')):
    if saved.isdigit() and int(saved) > step:
      shutil.rmtree(os.path.join(copy, 'checkpoints', saved))
  return copy


def dump(path, step):
  def hook(s, state):
    if s == step:
      np.savez(path, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
  return hook


def _load(path):
  with np.load(path) as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split('_')[1]))]


def restore(config, workdir, saved):
  """Restores the newest checkpoint of `workdir` laid out for `config`'s mesh; checks it bit for bit
  against the parameters dumped when it was saved; returns the shape of one kernel's shard on a device."""
  program = program_lib.build(config, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  try:
    step, state, _ = ckpt.restore_newest_good(checkpoint.abstract_with_shardings(program.abstract,
                                                                                 program.state_sharding), lambda *a: None)
  finally:
    ckpt.close()
  assert step == 25
  for a, b in zip(jax.tree.leaves(state.params), _load(saved)):
    np.testing.assert_array_equal(np.asarray(a), b)
  kernel = state.params['encoder']['block_0']['attention']['qkv']['kernel']
  return list(kernel.sharding.shard_shape(kernel.shape))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('sharding')
  os.environ['CORPUS'] = str(root / 'corpus.txt')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}
  code = ON_EIGHT_DEVICES.format(tests=os.path.join(ROOT, 'tests'), root=str(root))
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.split('RESULTS')[1])
  one = train.train(config(), str(root / 'one'), hooks=[dump(str(root / 'one.npz'), 50)])
  return root, results, one


@pytest.mark.parametrize('mesh', list(MESHES))
def test_every_mesh_trains_like_one_device(runs, mesh):
  root, results, one = runs
  assert results[mesh]['steps_trained'] == 50
  assert abs(results[mesh]['validation_loss'] - one['validation_loss']) <= LOSS_RTOL * one['validation_loss']
  for a, b in zip(_load(root / 'one.npz'), _load(root / f'{mesh}.npz')):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  samples = root / mesh / 'samples'
  if mesh == SAMPLING_MESH:  # tensor-parallel decoding wrote its text
    assert [p.read_text() for p in samples.iterdir()] and all(p.stat().st_size > 0 for p in samples.iterdir())
  else:  # sample.num_samples=0: none
    assert not samples.exists() or not list(samples.iterdir())


def test_fsdp_holds_an_eighth_of_the_state_per_device(runs):
  _, results, one = runs
  fsdp = results['fsdp8']
  assert one['state_bytes'] == one['state_bytes_per_device'] == fsdp['state_bytes'] == results['data8']['state_bytes_per_device']
  # Every parameter and moment is split 8 ways (LayerNorm scales too); what stays whole: the step,
  # the RNG key, Adam's count, and the injected learning rate and its step count (<= 64 bytes).
  assert fsdp['state_bytes'] / 8 <= fsdp['state_bytes_per_device'] <= fsdp['state_bytes'] / 8 + 64
  assert fsdp['measured_bytes_per_device'] == fsdp['state_bytes_per_device']
  mixed = results['data2_fsdp2_tensor2']
  assert mixed['measured_bytes_per_device'] == mixed['state_bytes_per_device'] < fsdp['state_bytes'] / 2


def test_a_checkpoint_resumes_under_another_mesh(runs, tmp_path):
  root, results, one = runs
  # tensor 4 x data 2 -> fsdp 8: restored bit for bit (in the subprocess), laid out for the new mesh, and trained on.
  assert results['restored_shard_shape'] == [32 // 8, 3, 4, 8]  # (embed, 3, heads, kv): embed split 8 ways
  assert results['resumed']['steps_trained'] == 25
  assert abs(results['resumed']['validation_loss'] - one['validation_loss']) <= LOSS_RTOL * one['validation_loss']
  # fsdp 8 -> 1 device.
  resumed = cut_at(str(root / 'fsdp8'), str(tmp_path / 'resumed'), 25)
  restore(config(), resumed, str(root / 'fsdp8_25.npz'))
  again = train.train(config(), resumed)
  assert again['steps_trained'] == 25
  assert abs(again['validation_loss'] - one['validation_loss']) <= LOSS_RTOL * one['validation_loss']
