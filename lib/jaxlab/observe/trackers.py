"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow, each optional.

A tracker gets the config when the run starts, every metric line, the pictures and texts of
each evaluation, and at the end the summary and the report files (eval JSON, confusion
matrices). Its run id is kept in <workdir>/trackers.json, so a resumed run continues the same
tracker run. Only process 0 tracks. A tracker that cannot start is a one-line error before any
training; one that fails mid-run (a network outage) is dropped with a warning and the run goes on.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import secrets
import sys
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

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


class WandbRun:
  """A Weights & Biases run; `step` is its x-axis, so a resumed run may log a step again."""

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

  def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
    self.run.log({'step': step, **{f'{split}/{k}': v for k, v in _scalars(values).items()}})

  def showcase(self, step: int, items: Mapping[str, Any]) -> None:
    shown = {f'samples/{name}': self._wandb.Html(f'<pre>{html.escape(item)}</pre>') if isinstance(item, str)
             else self._wandb.Image(np.asarray(item)) for name, item in items.items()}
    self.run.log({'step': step, **shown})

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


class MlflowRun:
  """An MLflow run through MlflowClient (no global active run): params, metrics, images, artifacts."""

  MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for log_batch
  STATUS = {'finished': 'FINISHED', 'preempted': 'KILLED', 'failed': 'FAILED'}

  def __init__(self, settings: ml_collections.ConfigDict, config: dict[str, Any], workdir: str, run_id: str | None):
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    self.client = MlflowClient(tracking_uri=settings.tracking_uri or None)
    if run_id is not None:
      try:
        self.client.update_run(run_id, status='RUNNING')
        self.run_id = run_id
        return
      except MlflowException:
        print(f'warning: MLflow run {run_id} of {workdir} is not in {self.client.tracking_uri}; starting a new one',
              file=sys.stderr, flush=True)
    experiment = self.client.get_experiment_by_name(settings.experiment)
    experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
        settings.experiment, artifact_location=settings.artifact_location or None)
    self.run_id = self.client.create_run(experiment_id, run_name=settings.run_name or os.path.basename(
        workdir.rstrip('/')), tags={'jaxlab.workdir': workdir}).info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in config.items()]
    for i in range(0, len(params), self.MAX_PARAMS_PER_BATCH):
      self.client.log_batch(self.run_id, params=params[i:i + self.MAX_PARAMS_PER_BATCH])

  def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    self.client.log_batch(self.run_id, metrics=[Metric(f'{split}/{k}', v, now, step)
                                                for k, v in _scalars(values).items()])

  def showcase(self, step: int, items: Mapping[str, Any]) -> None:
    for name, item in items.items():
      if isinstance(item, str):
        self.client.log_text(self.run_id, item, f'samples/step_{step:08d}_{name}.txt')
      else:
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
