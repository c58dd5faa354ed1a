import json
import os

import pytest
from conftest import ROOT, tiny_config

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.run import workdir_lock


def test_overrides_are_typed_and_applied():
  config = config_lib.load(os.path.join(ROOT, 'configs/mnist1d/cnn.py'),
                           ['optimizer.learning_rate=3e-3', 'train.num_steps=7', 'model.channels=8'])
  assert config.optimizer.learning_rate == pytest.approx(3e-3)
  assert config.train.num_steps == 7 and isinstance(config.train.num_steps, int)
  assert config.model.channels == 8


@pytest.mark.parametrize('override, message', [
    ('optimizer.learnin_rate=1', "unknown config key 'optimizer.learnin_rate'"),
    ('nope.x=1', "unknown config key 'nope'"),
    ('train.num_steps=abc', "cannot parse 'abc' as int"),
    ('train.num_steps=1.5', 'train.num_steps'),
])
def test_bad_overrides_name_the_problem(override, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(')):
    config_lib.load(os.path.join(ROOT, 'configs/mnist1d/cnn.py'), [override])


def test_missing_config_file():
  with pytest.raises(ConfigError, match='config file not found'):
    config_lib.load('configs/does/not/exist.py')


def test_config_is_locked_against_typos():
  config = tiny_config()
  with pytest.raises(AttributeError):
    config.optimizer.learnig_rate = 1.0


def test_workdir_with_other_config_names_differing_keys(tmp_path):
  workdir = str(tmp_path / 'run')
  old = tiny_config()
  workdir_lock.prepare_workdir(workdir, old).release()
  config_lib.save(workdir, old)
  new = tiny_config(**{'optimizer.learning_rate': 0.5, 'seed': 3})
  with pytest.raises(ConfigError, match=r'optimizer\.learning_rate.*seed|seed.*optimizer\.learning_rate'):
    workdir_lock.prepare_workdir(workdir, new)
  workdir_lock.prepare_workdir(workdir, old).release()  # the same config resumes without complaint


def test_restart_moves_the_old_run_aside(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config()
  workdir_lock.prepare_workdir(workdir, config).release()
  config_lib.save(workdir, config)
  lock = workdir_lock.prepare_workdir(workdir, tiny_config(seed=5), restart=True)
  aside = [p for p in os.listdir(tmp_path) if p.startswith('run.old-')]
  assert len(aside) == 1
  with open(tmp_path / aside[0] / 'config.json') as f:
    assert json.load(f)['seed'] == 0
  assert os.listdir(workdir) == ['.lock']  # the new run's, held
  with pytest.raises(ConfigError, match='in use by a run'):
    workdir_lock.prepare_workdir(workdir, tiny_config(seed=5))
  lock.release()


@pytest.mark.skipif(os.geteuid() == 0, reason='root can write anywhere')
def test_unwritable_workdir(tmp_path):
  os.chmod(tmp_path, 0o500)
  with pytest.raises(ConfigError, match='not writable'):
    workdir_lock.prepare_workdir(str(tmp_path / 'run'), tiny_config())


def test_workdir_under_a_file_is_not_writable(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(ConfigError, match='not writable'):
    workdir_lock.prepare_workdir(str(tmp_path / 'file' / 'run'), tiny_config())


def test_differing_keys_of_nested_dicts():
  assert config_lib.differing_keys({'a': {'b': 1, 'c': 2}}, {'a': {'b': 1, 'c': 3}, 'd': 0}) == ['a.c', 'd']


def test_restart_on_a_read_only_filesystem_is_one_line(tmp_path, monkeypatch):
  import errno
  workdir = str(tmp_path / 'run')
  workdir_lock.prepare_workdir(workdir, tiny_config()).release()
  config_lib.save(workdir, tiny_config())

  def read_only(src, dst):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), src)

  monkeypatch.setattr(os, 'rename', read_only)
  with pytest.raises(ConfigError, match=r'^--restart could not move .*/run aside to .*/run\.old-\d+-\d+: '
                                        r'Read-only file system$'):
    workdir_lock.prepare_workdir(workdir, tiny_config(seed=3), restart=True)
  workdir_lock.prepare_workdir(workdir, tiny_config()).release()  # and the workdir is not left locked


def test_the_samples_shown_at_evaluation_may_change_on_resume_what_is_trained_may_not():
  config = config_lib.load(os.path.join(ROOT, 'configs', 'shakespeare_char', 'gpt.py'))
  saved = config_lib.to_dict(config)
  config_lib.set_value(config, 'sample.num_tokens', 20)  # fewer tokens per evaluation: nothing trained changes
  config_lib.set_value(config, 'sample.prompt', 'ROMEO:')
  config_lib.check_same(saved, config, 'resume')
  config_lib.set_value(config, 'data.block_size', 32)
  with pytest.raises(ConfigError, match=r"resume: data.block_size \(64 -> 32\)"):
    config_lib.check_same(saved, config, 'resume')
