"""Weights & Biases (offline, read back from the files it writes) and MLflow (a local SQLite store, read
back with MLflow's client) get the config, every metric line, the pictures and the summary."""

import glob
import json
import os
import signal
import struct
import zlib

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
  7-byte file header; each chunk has a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last).
  A chunk whose crc32 (of its type byte, then its data) is wrong ends it: a killed run's torn tail."""
  from wandb.proto import wandb_internal_pb2
  (path,) = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
  data = open(path, 'rb').read()
  assert data[:4] == b':W&B'
  records, pending, pos, block = [], b'', 7, 32768
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # too little room left in the block for a header: padding
      pos += block - pos % block
      continue
    crc, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    if zlib.crc32(data[pos + 7:pos + 7 + length], zlib.crc32(bytes([kind]))) != crc:
      break
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
  parts = sorted(glob.glob(str(workdir / 'wandb' / 'offline-run-*')))  # -1 ends a name begun in the same second
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


# A run killed after its last checkpoint (step 10) had logged train at 15 and was evaluating at 15; the
# resumed run logs train 15, test 15, train 20, test 20 again, with the same values (resume is exact).
BEFORE_CRASH = [(5, 'train', 0.5), (10, 'train', 0.4), (10, 'test', 0.45), (15, 'train', 0.3)]
AFTER_RESUME = [(15, 'train', 0.3), (15, 'test', 0.35), (20, 'train', 0.2), (20, 'test', 0.25)]


def _log(group, points):
  for step, split, loss in points:
    group.metrics(step, split, {'loss': loss, 'per_replica': [loss, loss]})


def test_a_resumed_mlflow_run_holds_each_step_once(tmp_path):
  config = tiny_config('mlp', **{'logging.mlflow.enabled': True,
                                 'logging.mlflow.tracking_uri': f'sqlite:///{tmp_path}/mlflow.db',
                                 'logging.mlflow.artifact_location': str(tmp_path / 'artifacts')})
  image = np.zeros((4, 4, 3), np.uint8)
  first = trackers.start(config, str(tmp_path), is_process_0=True)
  _log(first, BEFORE_CRASH)
  first.showcase(10, {'grid': image})
  first.showcase(15, {'grid': image})  # then killed: no close
  resumed = trackers.start(config, str(tmp_path), is_process_0=True)
  _log(resumed, AFTER_RESUME)
  for step in (15, 20):
    resumed.showcase(step, {'grid': image})
  resumed.close('finished')

  client = mlflow.MlflowClient(f'sqlite:///{tmp_path}/mlflow.db')
  run_id = json.loads((tmp_path / trackers.IDS_FILE).read_text())['mlflow']
  points = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}
  assert points == {'train/loss': [(5, 0.5), (10, 0.4), (15, 0.3), (20, 0.2)],
                    'test/loss': [(10, 0.45), (15, 0.35), (20, 0.25)]}
  pngs = sorted(os.path.basename(p).split('+timestamp')[0]
                for p in glob.glob(str(tmp_path / 'artifacts' / '**' / 'images' / '*.png'), recursive=True))
  assert pngs == ['samples~grid+step+10', 'samples~grid+step+15', 'samples~grid+step+20']


def test_a_resumed_offline_wandb_run_holds_each_step_once(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  config = tiny_config('mlp', **{'logging.wandb.enabled': True})
  image = np.zeros((4, 4, 3), np.uint8)
  first = trackers.start(config, str(tmp_path), is_process_0=True)
  _log(first, BEFORE_CRASH)
  first.showcase(10, {'grid': image})
  first.showcase(15, {'grid': image})
  first.close('failed')  # a killed process's log ends where it stopped writing: a torn chunk at most
  run_id = json.loads((tmp_path / trackers.IDS_FILE).read_text())['wandb']
  (log,) = glob.glob(str(tmp_path / 'wandb' / 'offline-run-*' / f'run-{run_id}.wandb'))
  with open(log, 'ab') as f:
    f.write(b'\x12\x34\x56\x78\xff\x00\x01' + b'torn')
  resumed = trackers.start(config, str(tmp_path), is_process_0=True)
  _log(resumed, AFTER_RESUME)
  for step in (15, 20):
    resumed.showcase(step, {'grid': image})
  resumed.close('finished')

  parts = sorted(glob.glob(str(tmp_path / 'wandb' / 'offline-run-*')))
  assert len(parts) == 2  # what `wandb sync` uploads; -1 ends the second's name if both began in one second
  counts = {}
  for part in parts:
    for step, key in _wandb_history(_wandb_records(part)):
      counts[step, key] = counts.get((step, key), 0) + 1
  assert counts == {(5, 'train/loss'): 1, (10, 'train/loss'): 1, (10, 'test/loss'): 1, (15, 'train/loss'): 1,
                    (15, 'test/loss'): 1, (20, 'train/loss'): 1, (20, 'test/loss'): 1,
                    (10, 'samples/grid'): 1, (15, 'samples/grid'): 1, (20, 'samples/grid'): 1}


def test_a_resumed_online_wandb_run_reads_the_steps_it_holds_from_its_summary(tmp_path, monkeypatch):
  import wandb

  class ResumedRun:  # what wandb.init returns for a run the server holds: its summary
    offline = False
    summary = {'step': 15, '_jaxlab/step/train': 15, '_jaxlab/step/test': 10}  # the hidden key of each split
    rows = []

    def define_metric(self, *args, **kwargs):
      pass

    def log(self, row):
      self.rows.append(row)

  monkeypatch.setattr(wandb, 'init', lambda **kwargs: ResumedRun())
  run = trackers.WandbRun(tiny_config('mlp').logging.wandb, {}, str(tmp_path), 'abc')
  for step, split, loss in AFTER_RESUME:
    run.metrics(step, split, {'loss': loss})
  assert [(row['step'], [k for k in row if '/loss' in k]) for row in ResumedRun.rows] == [
      (15, ['test/loss']), (20, ['train/loss']), (20, ['test/loss'])]


def test_an_mlflow_server_that_refuses_is_one_line_in_seconds(tmp_path, monkeypatch):
  import socket
  import time
  with socket.socket() as s:  # a port nothing listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  monkeypatch.setenv('MLFLOW_HTTP_REQUEST_TIMEOUT', '7')  # the user's: kept
  monkeypatch.delenv('MLFLOW_HTTP_REQUEST_MAX_RETRIES', raising=False)
  config = tiny_config('mlp', **{'logging.mlflow.enabled': True,
                                 'logging.mlflow.tracking_uri': f'http://127.0.0.1:{port}'})
  began = time.perf_counter()
  with pytest.raises(ConfigError) as e:
    trackers.start(config, str(tmp_path), is_process_0=True)
  assert time.perf_counter() - began < 30  # MLflow's defaults: ~250 s
  assert str(e.value) == (f'logging.mlflow: could not start the tracker run: no answer from http://127.0.0.1:{port} '
                          '([Errno 111] Connection refused)')
  assert os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT'] == '7' and 'MLFLOW_HTTP_REQUEST_MAX_RETRIES' not in os.environ
