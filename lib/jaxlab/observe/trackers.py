"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow, each optional.

A tracker gets the config when the run starts, every metric line, the pictures and texts of
each evaluation, and at the end the summary and the report files (eval JSON, confusion
matrices). Its run id is kept in <workdir>/trackers.json, so a resumed run continues the same
tracker run. A resumed run logs no point of a step its tracker run already holds: a run killed after
its last checkpoint logged steps that the resumed run computes again (the same values, as resume is
exact), and each step is to be in the tracker once. Only process 0 tracks. A tracker that cannot start
is a one-line error before any training; one that fails mid-run (a network outage) is dropped with a
warning and the run goes on.
"""

from __future__ import annotations

import contextlib
import glob
import html
import importlib
import json
import os
import re
import secrets
import struct
import sys
import time
import zlib
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import ml_collections
import numpy as np
from etils import epath

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError, first_line

IDS_FILE = 'trackers.json'
PACKAGES = {'wandb': 'wandb', 'mlflow': 'mlflow'}  # tracker -> module; the pyproject extra has the tracker's name
OUTCOMES = ('finished', 'preempted', 'failed')


def enabled(config: ml_collections.ConfigDict) -> list[str]:
  return [name for name in PACKAGES if config.logging[name].enabled]


def check(config: ml_collections.ConfigDict) -> None:
  """A one-line ConfigError when an enabled tracker's package is missing."""
  for name in enabled(config):
    try:
      importlib.import_module(PACKAGES[name])
    except ImportError:
      raise ConfigError(f'logging.{name}.enabled needs the {PACKAGES[name]} package: '
                        f"pip install 'jaxlab[{name}]'") from None
  wandb = config.logging.wandb
  if wandb.enabled and wandb.mode not in ('', 'online', 'offline', 'disabled'):
    raise ConfigError(f"logging.wandb.mode must be '', 'online', 'offline' or 'disabled', got {wandb.mode!r}")


class Tracker(Protocol):
  """One tracking service's run."""

  run_id: str

  def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None: ...

  def showcase(self, step: int, items: Mapping[str, Any]) -> None: ...

  def finish(self, summary: Mapping[str, Any], files: Sequence[str]) -> None: ...

  def close(self, outcome: str) -> None: ...


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
  """The float-valued entries (per-replica lists stay in metrics.jsonl, as for TensorBoard)."""
  return {k: float(v) for k, v in values.items() if isinstance(v, (float, int)) and not isinstance(v, bool)}


def _wandb_records(path: str) -> Iterator[Any]:
  """The records of a W&B transaction log (run-<id>.wandb, what `wandb sync` uploads): a 7-byte file header,
  then LevelDB-style chunks in 32 KiB blocks, each after a 7-byte header (crc32 of its type and data, length,
  type: 1 full, 2 first, 3 middle, 4 last). Ends at the first torn or corrupt chunk: a killed run's tail."""
  from wandb.proto import wandb_internal_pb2
  data = epath.Path(path).read_bytes()
  if data[:4] != b':W&B':
    return
  pending, pos, block = b'', 7, 32768
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # too little room left in the block for a header: padding
      pos += block - pos % block
      continue
    crc, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    chunk = data[pos + 7:pos + 7 + length]
    if kind not in (1, 2, 3, 4) or len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
      return
    pos += 7 + length
    pending += chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record
      pending = b''


class WandbRun:
  """A Weights & Biases run; `step` is its x-axis.

  Each row (one split's metrics, or one evaluation's samples, at one step) also carries the hidden key
  HELD + split, so the run's summary holds the last step of each split: a resumed online run reads it
  from the server, a resumed offline run from the transaction logs of the run's earlier offline parts
  (no server to ask; `wandb sync` uploads each part). Rows at or below those steps are not logged again.
  """

  HELD = '_jaxlab/step/'

  def __init__(self, settings: ml_collections.ConfigDict, config: dict[str, Any], workdir: str, run_id: str | None):
    import wandb
    self._wandb = wandb
    self.run_id = run_id or secrets.token_hex(6)
    local = '://' not in workdir  # wandb keeps its files on a local disk; a bucket run uses ./wandb
    self.run = wandb.init(project=settings.project, entity=settings.entity or None,
                          name=settings.name or os.path.basename(workdir.rstrip('/')), tags=list(settings.tags),
                          config=config, id=self.run_id, resume='allow', dir=workdir if local else None,
                          mode=settings.mode or None, settings=wandb.Settings(console='off', quiet=True))
    self.run.define_metric('step')
    self.run.define_metric('*', step_metric='step')
    summary = self.run.summary
    self.held = {key[len(self.HELD):]: int(step) for key in list(summary.keys())  # split -> its last step in the run
                 if key.startswith(self.HELD) and isinstance(step := summary.get(key), (int, float))}
    if run_id is not None and self.run.offline:
      for split, step in self._held_offline().items():
        self.held[split] = max(step, self.held.get(split, step))
    self._defined: set[str] = set()

  def _held_offline(self) -> dict[str, int]:
    """The last step of each split in the run's earlier offline parts (siblings of this part's folder)."""
    here = os.path.dirname(os.path.normpath(self.run.dir))  # the part's folder; dir: its files/
    # wandb names a part offline-run-<time to the second>-<id>, with -<n> after a part begun in the same second
    name = re.compile(rf'offline-run-\d{{8}}_\d{{6}}-{re.escape(self.run_id)}(-\d+)?')
    held: dict[str, int] = {}
    for part in glob.glob(os.path.join(glob.escape(os.path.dirname(here)), 'offline-run-*')):
      log = os.path.join(part, f'run-{self.run_id}.wandb')
      if not name.fullmatch(os.path.basename(part)) or os.path.normpath(part) == here or not os.path.exists(log):
        continue
      for record in _wandb_records(log):
        if record.WhichOneof('record_type') != 'history':
          continue
        for item in record.history.item:
          key = '/'.join(item.nested_key) or item.key
          if key.startswith(self.HELD):
            split = key[len(self.HELD):]
            held[split] = max(int(json.loads(item.value_json)), held.get(split, -1))
    return held

  def _log(self, step: int, split: str, row: dict[str, Any]) -> None:
    if step <= self.held.get(split, -1):
      return  # the run holds it: logged before a crash, and computed again after the resume
    key = self.HELD + split
    if key not in self._defined:
      self.run.define_metric(key, hidden=True)
      self._defined.add(key)
    self.run.log({'step': step, **row, key: step})

  def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
    self._log(step, split, {f'{split}/{k}': v for k, v in _scalars(values).items()})

  def showcase(self, step: int, items: Mapping[str, Any]) -> None:
    shown = {f'samples/{name}': self._wandb.Html(f'<pre>{html.escape(item)}</pre>') if isinstance(item, str)
             else self._wandb.Image(np.asarray(item)) for name, item in items.items()}
    self._log(step, 'samples', shown)

  def finish(self, summary: Mapping[str, Any], files: Sequence[str]) -> None:
    self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
    report = os.path.join(self.run.dir, 'report')  # files in the run's folder are uploaded (offline: synced) with it
    os.makedirs(report, exist_ok=True)
    for path in files:
      (epath.Path(report) / os.path.basename(path)).write_bytes(epath.Path(path).read_bytes())

  def close(self, outcome: str) -> None:
    if outcome == 'preempted':
      self.run.mark_preempting()
    self.run.finish(exit_code=1 if outcome == 'failed' else 0)


@contextlib.contextmanager
def _env_defaults(values: Mapping[str, str]) -> Iterator[None]:
  """Sets, for the block only, each of the environment variables the user has not set."""
  added = {k: v for k, v in values.items() if k not in os.environ}
  os.environ.update(added)
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


class MlflowRun:
  """An MLflow run through MlflowClient (no global active run): params, metrics, images, artifacts.

  A resumed run reads the last step of each metric key (its history) and of each image key (the names of
  MLflow's image files) and does not log those steps again; texts are files named by step, written over.
  """

  MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for log_batch
  STATUS = {'finished': 'FINISHED', 'preempted': 'KILLED', 'failed': 'FAILED'}
  # The first request only: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) take ~250 s to give up
  # on a refused address. These take ~3 s (~20 s if packets are dropped); later requests keep the defaults, so
  # a short outage mid-run is waited out.
  FIRST_REQUEST_ENV = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2', 'MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR': '1',
                       'MLFLOW_HTTP_REQUEST_TIMEOUT': '5'}
  # The names log_image gives: images/<key, / as ~ (before 3.x: #)>+step+<step>+timestamp+... (before: % for +).
  IMAGE_FILE = re.compile(r'(.+?)[+%]step[+%](\d+)[+%]')

  def __init__(self, settings: ml_collections.ConfigDict, config: dict[str, Any], workdir: str, run_id: str | None):
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    self.client = MlflowClient(tracking_uri=settings.tracking_uri or None)
    self.held: dict[str, int] = {}  # metric key or samples/<image name> -> its last step in the run
    with _env_defaults(self.FIRST_REQUEST_ENV):
      try:
        experiment = self.client.get_experiment_by_name(settings.experiment)
      except Exception as e:  # noqa: BLE001 - whatever the store raises: one line that names the URI
        reason = first_line(e)
        if 'Max retries exceeded' in reason:  # requests' long message: the gist is in its innermost cause
          cause = re.search(r'\[Errno -?\d+\][^"\')]*|timed out|too many \d+ error responses', reason)
          raise ConnectionError(f'no answer from {self.client.tracking_uri}'
                                f'{f" ({cause.group(0).strip()})" if cause else ""}') from None
        raise ConnectionError(f'{self.client.tracking_uri}: {reason}') from None
    if run_id is not None:
      try:
        self.client.update_run(run_id, status='RUNNING')
      except MlflowException:
        print(f'warning: MLflow run {run_id} of {workdir} is not in {self.client.tracking_uri}; starting a new one',
              file=sys.stderr, flush=True)
      else:
        self.run_id, self.held = run_id, self._held(run_id)
        return
    experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
        settings.experiment, artifact_location=settings.artifact_location or None)
    self.run_id = self.client.create_run(experiment_id, run_name=settings.run_name or os.path.basename(
        workdir.rstrip('/')), tags={'jaxlab.workdir': workdir}).info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in config.items()]
    for i in range(0, len(params), self.MAX_PARAMS_PER_BATCH):
      self.client.log_batch(self.run_id, params=params[i:i + self.MAX_PARAMS_PER_BATCH])

  def _held(self, run_id: str) -> dict[str, int]:
    """The last step of each metric key and each image key the run holds."""
    held = {key: max(m.step for m in self.client.get_metric_history(run_id, key))
            for key in self.client.get_run(run_id).data.metrics}
    for info in self.client.list_artifacts(run_id, 'images'):
      match = self.IMAGE_FILE.match(os.path.basename(info.path))
      if match:
        key = re.sub('[~#]', '/', match.group(1))
        held[key] = max(int(match.group(2)), held.get(key, -1))
    return held

  def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    points = [Metric(f'{split}/{k}', v, now, step) for k, v in _scalars(values).items()
              if step > self.held.get(f'{split}/{k}', -1)]  # the others: logged before a crash
    if points:
      self.client.log_batch(self.run_id, metrics=points)

  def showcase(self, step: int, items: Mapping[str, Any]) -> None:
    for name, item in items.items():
      if isinstance(item, str):
        self.client.log_text(self.run_id, item, f'samples/step_{step:08d}_{name}.txt')
      elif step > self.held.get(f'samples/{name}', -1):
        self.client.log_image(self.run_id, np.asarray(item), key=f'samples/{name}', step=step)

  def finish(self, summary: Mapping[str, Any], files: Sequence[str]) -> None:
    for path in files:  # summary.json among them
      self.client.log_artifact(self.run_id, path, 'report')

  def close(self, outcome: str) -> None:
    self.client.set_terminated(self.run_id, status=self.STATUS[outcome])


BACKENDS: dict[str, Callable[..., Tracker]] = {'wandb': WandbRun, 'mlflow': MlflowRun}


class Trackers:
  """The run's trackers as one: each call goes to every tracker still working."""

  def __init__(self, trackers: Mapping[str, Tracker]):
    self._trackers = dict(trackers)

  def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
    for name, tracker in list(self._trackers.items()):
      try:
        call(tracker)
      except Exception as e:  # noqa: BLE001 - a tracker outage must not cost the training run
        del self._trackers[name]
        print(f'warning: {name} failed ({what}: {first_line(e)}); the run goes on without it', file=sys.stderr,
              flush=True)

  def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
    self._each('logging metrics', lambda t: t.metrics(step, split, values))

  def showcase(self, step: int, items: Mapping[str, Any]) -> None:
    self._each('logging samples', lambda t: t.showcase(step, items))

  def finish(self, summary: Mapping[str, Any], files: Sequence[str]) -> None:
    self._each('logging the summary', lambda t: t.finish(summary, files))

  def close(self, outcome: str) -> None:
    self._each('closing', lambda t: t.close(outcome))
    self._trackers = {}


def start(config: ml_collections.ConfigDict, workdir: str, is_process_0: bool) -> Trackers:
  """Starts (or, with ids in <workdir>/trackers.json, resumes) the enabled trackers' runs."""
  names = enabled(config) if is_process_0 else []
  if not names:
    return Trackers({})
  ids_path = epath.Path(workdir) / IDS_FILE
  ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
  flat = config_lib.flatten(config_lib.to_dict(config))
  started: dict[str, Tracker] = {}
  try:
    for name in names:
      try:
        started[name] = BACKENDS[name](config.logging[name], flat, workdir, ids.get(name))
      except Exception as e:  # noqa: BLE001 - whatever the service raises: one line, before any training
        raise ConfigError(f'logging.{name}: could not start the tracker run: {first_line(e)}') from None
      ids[name] = started[name].run_id
      ids_path.write_text(json.dumps(ids, indent=1))
  except BaseException:
    Trackers(started).close('failed')
    raise
  return Trackers(started)
