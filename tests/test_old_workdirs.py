"""A workdir written before the package was regrouped (commit 1129c8c) resumes with today's code."""

import json
import os
import shutil

import pytest
from conftest import ROOT

from jaxlab import config as config_lib
from jaxlab.run import train

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'workdir_1129c8c')


def test_a_workdir_of_1129c8c_resumes_at_its_checkpoint_and_ends_as_that_code_did(tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(FIXTURE, workdir)
  # The command that wrote it (tests/fixtures/README.md): the same config must be accepted as the same run.
  config = config_lib.load(os.path.join(ROOT, 'configs', 'mnist1d', 'mlp.py'), [
      'model.hidden=(8,)', 'train.num_steps=8', 'train.checkpoint_every=4', 'train.log_every=4',
      'train.eval_every=4'])
  summary = train.train(config, workdir)
  assert (summary['step'], summary['steps_trained']) == (8, 4)  # resumed from its step-4 checkpoint
  with open(os.path.join(ROOT, 'tests', 'fixtures', 'workdir_1129c8c_final_test_metrics.json')) as f:
    expected = json.load(f)
  # Measured with 1129c8c on one machine; other CPUs may round differently in the last bits.
  assert {k: summary[k] for k in expected} == pytest.approx(expected, rel=1e-4, abs=1e-6)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps == [4, 4, 8, 8]  # the old lines kept, the new ones appended
