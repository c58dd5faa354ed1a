"""Where a run's numbers go: metrics.jsonl, TensorBoard, and a progress display."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax


class MetricWriter:
  """Appends one JSON object per (step, split) to metrics.jsonl and mirrors it to TensorBoard.

  Only process 0 writes; on other processes every call is a no-op.
  """

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': step, 'split': split, **metrics, 'time': time.time()}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for name, value in metrics.items():
      if isinstance(value, float):  # per-replica lists stay in metrics.jsonl
        self._tb.add_scalar(f'{split}/{name}', value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def format_metrics(metrics: Mapping[str, float | list]) -> str:
  return ' '.join(f'{k}={v:.4g}' for k, v in metrics.items() if isinstance(v, float))


class Progress:
  """A tqdm bar on a terminal; plain lines (one per logged step) otherwise."""

  def __init__(self, total: int, initial: int):
    self.enabled = jax.process_index() == 0
    self.total = total
    self._bar = None
    if self.enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True, file=sys.stderr)
    self._step = initial

  def update(self, step: int, metrics: Mapping[str, float], steps_per_sec: float) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(step - self._step)
      self._bar.set_postfix(loss=f'{metrics["loss"]:.4f}', refresh=False)
    else:
      eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float('nan')
      shown = {k: v for k, v in metrics.items() if k != 'steps_per_sec'}
      print(f'step {step}/{self.total} | {format_metrics(shown)} | {steps_per_sec:.0f} steps/s | ETA {eta:.0f}s',
            flush=True)
    self._step = step

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
