"""Initialising a run from another run's checkpoint (`init`), and frozen parameters (`optimizer.frozen`,
`optimizer.linear_probe`)."""

import re
import shutil

import jax
import numpy as np
import pytest
from conftest import launch, tiny_config

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.run import program as program_lib
from jaxlab.run import train


def _params(config, workdir, **kwargs):
  return jax.device_get(program_lib.restore_checkpoint(config, str(workdir), **kwargs)[2].params)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """An MLP 40-16-10 trained 30 steps, checkpoints at 10, 20, 30."""
  workdir = tmp_path_factory.mktemp('source')
  config = tiny_config('mlp', **{'model.hidden': (16,), 'train.num_steps': 30})
  train.train(config, str(workdir))
  return config, workdir


def test_map_and_skip_copy_exactly_the_mapped_arrays_and_frozen_ones_stay_bitwise(source, tmp_path):
  source_config, source_dir = source
  # 40-16-10-10: Dense_0 from the source's Dense_0, Dense_1 (16x10) from its head, the new head fresh.
  config = tiny_config('mlp', **{'model.hidden': (16, 10), 'init.workdir': str(source_dir),
                                 'init.map': ((r'^head/(.*)', r'Dense_1/\1'),), 'init.skip': '^head/',
                                 'optimizer.frozen': '^Dense_'})
  train.train(config, str(tmp_path))
  mine, theirs = _params(config, tmp_path), _params(source_config, source_dir)
  for name in ('kernel', 'bias'):
    assert np.array_equal(mine['Dense_0'][name], theirs['Dense_0'][name])
    assert np.array_equal(mine['Dense_1'][name], theirs['head'][name])
  program = program_lib.build(config)
  fresh = jax.device_get(program.task.init(program.rng, program.example).params)
  assert not np.allclose(mine['head']['kernel'], fresh['head']['kernel'])  # the head alone trained


def test_init_step_picks_that_checkpoint_and_linear_probe_trains_only_the_head_of_every_replica(source, tmp_path):
  source_config, source_dir = source
  config = tiny_config('mlp', **{'model.hidden': (16,), 'init.workdir': str(source_dir), 'init.step': 20,
                                 'optimizer.linear_probe': True, 'num_replicas': 2})
  train.train(config, str(tmp_path))
  mine, at_20 = _params(config, tmp_path), _params(source_config, source_dir, step=20)
  at_30 = _params(source_config, source_dir)
  assert not np.array_equal(at_20['Dense_0']['kernel'], at_30['Dense_0']['kernel'])
  for replica in range(2):
    for name in ('kernel', 'bias'):
      assert np.array_equal(mine['Dense_0'][name][replica], at_20['Dense_0'][name])
    assert not np.allclose(mine['head']['kernel'][replica], at_20['head']['kernel'], atol=1e-4)


def test_the_runs_own_checkpoint_wins_over_init(source, tmp_path):
  source_config, source_dir = source
  copy = tmp_path / 'source'
  shutil.copytree(source_dir, copy)
  config = tiny_config('mlp', **{'model.hidden': (16,), 'init.workdir': str(copy)})
  workdir = tmp_path / 'run'
  train.train(config, str(workdir))
  first = _params(config, workdir)
  shutil.rmtree(copy)  # a second start that read init would fail now
  train.train(config, str(workdir))
  np.testing.assert_array_equal(_params(config, workdir)['head']['kernel'], first['head']['kernel'])


@pytest.mark.parametrize('overrides, message', [
    ({'init.map': (('^nothing', 'x'),)}, "init.map rule ('^nothing', 'x') matches no parameter of"),
    ({'model.hidden': (8,)}, 'init: params:Dense_0/bias has shape (8,) here but params:Dense_0/bias of'),
    ({'model.hidden': (16, 16)}, 'init: params:Dense_1/bias of this run has no source in'),
    ({'init.skip': 'nothing'}, "init.skip 'nothing' matches no parameter of this run"),
    ({'optimizer.frozen': 'nothing'}, "optimizer.frozen 'nothing' matches no parameter; the parameters are"),
    ({'optimizer.frozen': '.'}, "optimizer.frozen '.' matches every parameter: nothing would train"),
    ({'init.checkpoint': 'best'}, 'has no checkpoint to load (no best/ folder'),
    ({'init.step': 15}, 'has no checkpoint of step 15; it has 10, 20, 30'),
])
def test_bad_init_is_a_config_error_naming_the_problem(source, tmp_path, overrides, message):
  config = tiny_config('mlp', **{'model.hidden': (16,), 'init.workdir': str(source[1]), **overrides})
  with pytest.raises(ConfigError, match=re.escape(message)):
    train.train(config, str(tmp_path))


def test_linear_probe_needs_a_head_and_a_missing_source_is_one_line(tmp_path):
  gcn_like = tiny_config('mlp', **{'optimizer.linear_probe': True, 'optimizer.frozen': 'Dense'})
  with pytest.raises(ConfigError, match='set optimizer.frozen or optimizer.linear_probe, not both'):
    train.train(gcn_like, str(tmp_path / 'a'))
  result = launch('--config=configs/mnist1d/mlp.py', f'--workdir={tmp_path / "b"}', '--config.train.num_steps=2',
                  f'--config.init.workdir={tmp_path / "missing"}')
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip() == f'error: {tmp_path / "missing"} holds no run (no readable config.json)'


def test_a_run_saved_before_a_key_existed_resumes_while_it_keeps_the_default():
  config = tiny_config('mlp')
  saved = config_lib.to_dict(config)
  del saved['init']
  del saved['optimizer']['frozen']
  config_lib.check_same(saved, config, 'refused')  # the defaults are what the old run did
  config_lib.set_value(config, 'optimizer.frozen', 'Dense_0')
  with pytest.raises(ConfigError, match=r"optimizer.frozen \('<absent>' -> 'Dense_0'\)"):
    config_lib.check_same(saved, config, 'refused')
