"""Weights & Biases (offline, read back from the files it writes) and MLflow (a local SQLite store, read
back with MLflow's client) get the config, every metric line, the pictures and the summary."""

import glob
import json
import os
import signal
import struct
import sys

import numpy as np
import pytest
from conftest import launch, tiny_config
from PIL import Image

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.observe import trackers
from jaxlab.run import train

mlflow = pytest.importorskip('mlflow', reason="needs jaxlab's [mlflow] extra")
pytest.importorskip('wandb', reason="needs jaxlab's [wandb] extra")


def _config(tmp_path, **overrides):
  return tiny_config('mlp', **{'logging.wandb.enabled': True, 'logging.wandb.tags': ('tiny', 'test'),
                               'logging.mlflow.enabled': True,
                               'logging.mlflow.tracking_uri': f'sqlite:///{tmp_path}/mlflow.db',
                               'logging.mlflow.artifact_location': str(tmp_path / 'artifacts'), **overrides})


def _wandb_records(run_dir: str) -> list:
  """The protobuf records of an offline run's .wandb file: a LevelDB-style log of 32 KiB blocks after a
  7-byte file header; each chunk has a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last)."""
  from wandb.proto import wandb_internal_pb2
  (path,) = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
  data = open(path, 'rb').read()
  assert data[:4] == b':W&B'
  records, pending, pos, block = [], b'', 7, 32768
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # too little room left in the block for a header: padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b''
  return records


def _wandb_history(records) -> dict[tuple[int, str], object]:
  """(step, key) -> value of every logged point (our x-axis `step` is logged with each)."""
  points = {}
  for r in records:
    if r.WhichOneof('record_type') == 'history':
      items = {}
      for item in r.history.item:  # a logged object (an image, html) comes as one item per field
        key, *field = list(item.nested_key) or [item.key]
        value = json.loads(item.value_json)
        if field:
          items.setdefault(key, {})[field[0]] = value
        else:
          items[key] = value
      points.update({(items['step'], k): v for k, v in items.items() if not k.startswith('_') and k != 'step'})
  return points


def _metric_lines(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_both_trackers_get_config_metrics_pictures_summary_and_a_resume_continues_their_runs(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  config, workdir = _config(tmp_path), tmp_path / 'run'
  first = train.train(config, str(workdir), hooks=[lambda step, state: step == 12 and os.kill(os.getpid(), signal.SIGTERM)])
  assert first['preempted']
  ids = json.loads((workdir / trackers.IDS_FILE).read_text())
  client = mlflow.MlflowClient(f'sqlite:///{tmp_path}/mlflow.db')
  assert client.get_run(ids['mlflow']).info.status == 'KILLED'
  summary = train.train(config, str(workdir))
  assert json.loads((workdir / trackers.IDS_FILE).read_text()) == ids  # the same tracker runs, continued

  lines = _metric_lines(workdir)
  expected = {(r['step'], f'{r["split"]}/{k}'): v for r in lines for k, v in r.items()
              if k not in ('step', 'split', 'time') and isinstance(v, float)}
  assert {s for s, _ in expected} == {5, 10, 13, 15, 20}  # 13: the preempted part's last line
  assert (20, 'test/accuracy') in expected

  # MLflow: every metric point, the config as params, the report files, FINISHED.
  run = client.get_run(ids['mlflow'])
  assert run.info.status == 'FINISHED'
  logged = {(m.step, key): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}
  assert logged == pytest.approx(expected, rel=1e-12)
  assert run.data.params['optimizer.learning_rate'] == str(config.optimizer.learning_rate)
  assert run.data.params['model.hidden'] == str(list(config.model.hidden))
  report = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, 'report')}
  assert report == {'summary.json', 'eval_test.json', 'confusion_test.png'}
  assert json.loads(open(client.download_artifacts(run.info.run_id, 'report/summary.json', str(tmp_path))).read()) == summary

  # wandb: two offline parts of one run id; together every metric point, the config, the summary.
  parts = sorted(glob.glob(str(workdir / 'wandb' / f'offline-run-*-{ids["wandb"]}')))
  assert len(parts) == 2
  records = [r for part in parts for r in _wandb_records(part)]
  assert _wandb_history(records) == pytest.approx(expected, rel=1e-12)
  run_records = [r.run for r in records if r.WhichOneof('record_type') == 'run']
  assert {r.run_id for r in run_records} == {ids['wandb']} and list(run_records[0].tags) == ['tiny', 'test']
  logged_config = {u.key: json.loads(u.value_json) for u in run_records[0].config.update}
  assert logged_config['optimizer.learning_rate'] == config.optimizer.learning_rate
  final = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof('record_type') == 'summary'
           for u in r.summary.update if u.key}
  assert final['test_accuracy'] == summary['test_accuracy'] and final['step'] == 20
  assert sorted(os.listdir(os.path.join(parts[1], 'files', 'report'))) == [
      'confusion_test.png', 'eval_test.json', 'summary.json']


def test_pictures_and_texts_reach_both_trackers(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
  group = trackers.start(_config(tmp_path), str(tmp_path), is_process_0=True)
  group.showcase(7, {'grid': image, 'text': 'to be <or> not'})
  group.close('finished')
  ids = json.loads((tmp_path / trackers.IDS_FILE).read_text())
  client = mlflow.MlflowClient(f'sqlite:///{tmp_path}/mlflow.db')
  text = client.download_artifacts(ids['mlflow'], 'samples/step_00000007_text.txt', str(tmp_path / 'dl'))
  assert open(text).read() == 'to be <or> not'
  pngs = [p for p in glob.glob(str(tmp_path / 'artifacts' / '**' / '*.png'), recursive=True)]
  assert len(pngs) == 1 and 'samples~grid+step+7+' in pngs[0]  # MLflow names the key and the step
  np.testing.assert_array_equal(np.asarray(Image.open(pngs[0]).convert('RGB')), image)
  (part,) = glob.glob(str(tmp_path / 'wandb' / 'offline-run-*'))
  (png,) = glob.glob(os.path.join(part, 'files', 'media', 'images', '**', '*grid*.png'), recursive=True)
  np.testing.assert_array_equal(np.asarray(Image.open(png).convert('RGB')), image)
  history = _wandb_history(_wandb_records(part))
  text = history[(7, 'samples/text')]
  assert text['_type'] == 'html-file'
  assert '<pre>to be &lt;or&gt; not</pre>' in open(os.path.join(part, 'files', text['path'])).read()


def test_a_failing_tracker_is_dropped_with_a_warning_and_the_others_go_on(capsys):
  class Broken:
    def metrics(self, step, split, values):
      raise ConnectionError('server unreachable\nmore detail')

  class Recording:
    def __init__(self):
      self.seen = []

    def metrics(self, step, split, values):
      self.seen.append((step, split, dict(values)))

  good = Recording()
  group = trackers.Trackers({'wandb': Broken(), 'mlflow': good})
  group.metrics(1, 'train', {'loss': 1.0})
  group.metrics(2, 'train', {'loss': 0.5})
  assert good.seen == [(1, 'train', {'loss': 1.0}), (2, 'train', {'loss': 0.5})]
  err = capsys.readouterr().err
  assert err == 'warning: wandb failed (logging metrics: server unreachable); the run goes on without it\n'


def test_a_tracker_that_cannot_start_is_one_line_before_training(tmp_path):
  config = tiny_config('mlp', **{'logging.mlflow.enabled': True, 'logging.mlflow.tracking_uri': 'bogus-scheme://x'})
  with pytest.raises(ConfigError, match=r'^logging.mlflow: could not start the tracker run: .*bogus') as e:
    train.train(config, str(tmp_path / 'run'))
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'run' / 'checkpoints' / '0').exists()


def test_a_missing_package_names_the_extra(tmp_path):
  fake = tmp_path / 'site' / 'wandb'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text("raise ModuleNotFoundError(\"No module named 'wandb'\")\n")
  env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'site')}
  proc = launch('--config=configs/mnist1d/mlp.py', '--config.logging.wandb.enabled=True',
                f'--workdir={tmp_path}/run', env=env, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: logging.wandb.enabled needs the wandb package: pip install 'jaxlab[wandb]'")


def test_tracker_settings_may_change_on_resume():
  config = tiny_config('mlp')
  saved = config_lib.to_dict(config)
  del saved['logging']  # a run from before the trackers existed
  config_lib.check_same(saved, config, 'refused')
  saved['train']['num_steps'] += 1
  with pytest.raises(ConfigError, match='train.num_steps'):
    config_lib.check_same(saved, config, 'refused')
