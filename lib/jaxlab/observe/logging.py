"""Where a run's numbers go: metrics.jsonl, TensorBoard, the trackers (trackers.py), and a progress display."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Mapping

from etils import epath

from jaxlab.observe.trackers import Trackers

METRICS_FILE = 'metrics.jsonl'
SHOWCASE_DIR = 'samples'


def write_png(path: epath.Path, image: Any) -> None:
  """An HWC uint8 image (1 or 3 channels) as a PNG file, also in a bucket (gs://)."""
  import io

  import numpy as np
  from PIL import Image
  image = np.asarray(image)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='png')
  path.write_bytes(buffer.getvalue())


def parse_line(line: str | bytes) -> dict[str, Any] | None:
  """One metrics.jsonl record, or None for a line that is not one (cut short by a crash, edited, garbage)."""
  try:
    record = json.loads(line)
  except (ValueError, UnicodeDecodeError):
    return None
  if not isinstance(record, dict):
    return None
  step = record.get('step')
  if not isinstance(step, int) or isinstance(step, bool) or not isinstance(record.get('split'), str):
    return None
  return record


def _is_process_0() -> bool:
  import jax  # not at the top: search parents read metrics.jsonl without starting JAX
  return jax.process_index() == 0


class MetricWriter:
  """Appends one JSON object per (step, split) to metrics.jsonl and mirrors it to TensorBoard and the trackers.

  Only process 0 writes; on other processes every call is a no-op. In a bucket (gs://), where
  objects cannot be appended to, the file is rewritten whole at each write.
  """

  def __init__(self, workdir: str, start_step: int = 0, trackers: Trackers | None = None):
    """`start_step`: the step the run resumes from. Records after it (logged by the interrupted run
    after its last checkpoint, and about to be logged again) are dropped from metrics.jsonl, and
    TensorBoard is told to purge its points after it, so both show each step once."""
    self.enabled = _is_process_0()
    self._trackers = trackers or Trackers({})
    if not self.enabled:
      return
    self._path = epath.Path(workdir) / METRICS_FILE
    lines = self._path.read_bytes().decode('utf-8', 'replace').splitlines(keepends=True) if self._path.exists() else []
    kept = [line for line in lines if (record := parse_line(line)) is not None and record['step'] <= start_step]
    if len(kept) < len(lines):
      skipped = sum(parse_line(line) is None for line in lines)
      if skipped:
        print(f'warning: dropped {skipped} unreadable line(s) of {self._path}', file=sys.stderr, flush=True)
      self._path.write_text(''.join(kept))
    self._lines = kept if '://' in workdir else None
    if self._lines is None:
      self._jsonl = open(self._path, 'a')
    self._events_dir, self._events_files = str(epath.Path(workdir) / 'tensorboard'), 0
    self._start_step = start_step
    self._open_events = None

  @property
  def _tb(self) -> Any:
    """The open TensorBoard writer: a new events file after each flush. Names otherwise differ only by
    the second: the start step and a count make them unique and put them in order for readers, which
    take a folder's files in name order (a resumed run's after the interrupted run's)."""
    if self._open_events is None:
      from tensorboardX import SummaryWriter
      first_after_resume = self._start_step > 0 and self._events_files == 0  # the purge: in that file only
      self._open_events = SummaryWriter(self._events_dir, purge_step=self._start_step + 1 if first_after_resume else None,
                                        filename_suffix=f'.{self._start_step:012d}.{self._events_files:06d}')
      self._events_files += 1
    return self._open_events

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    line = json.dumps({'step': step, 'split': split, **metrics, 'time': time.time()}) + '\n'
    if self._lines is None:
      self._jsonl.write(line)
      self._jsonl.flush()
    else:
      self._lines.append(line)
      self._path.write_text(''.join(self._lines))
    for name, value in metrics.items():
      if isinstance(value, float):  # per-replica lists stay in metrics.jsonl
        self._tb.add_scalar(f'{split}/{name}', value, step)
    self._trackers.metrics(step, split, metrics)

  def write_showcase(self, step: int, items: Mapping[str, Any]) -> list[str]:
    """Texts (str) and images (HWC uint8 arrays) a task shows at evaluation: files under samples/ and
    TensorBoard's text and image tabs. Returns the files written."""
    if not self.enabled:
      return []
    folder = self._path.parent / SHOWCASE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, item in items.items():
      if isinstance(item, str):
        path = folder / f'step_{step:08d}_{name}.txt'
        path.write_text(item)
        self._tb.add_text(name, f'```\n{item}\n```', step)  # a code block keeps line breaks in TensorBoard
      else:
        path = folder / f'step_{step:08d}_{name}.png'
        write_png(path, item)
        self._tb.add_image(name, item, step, dataformats='HWC')
      written.append(str(path))
    self._trackers.showcase(step, items)
    return written

  def flush(self) -> None:
    """Puts the TensorBoard events written so far on disk (metrics.jsonl is flushed at every write).

    tensorboardX's own flush() leaves the events still queued for its writer thread in memory; closing
    drains the queue.
    """
    if self.enabled and self._open_events is not None:
      self._open_events.close()
      self._open_events = None

  def close(self) -> None:
    if self.enabled:
      if self._lines is None:
        self._jsonl.close()
      self.flush()


def format_metrics(metrics: Mapping[str, float | list]) -> str:
  return ' '.join(f'{k}={v:.4g}' for k, v in metrics.items() if isinstance(v, float))


class Progress:
  """A tqdm bar on a terminal; plain lines (one per logged step) otherwise."""

  def __init__(self, total: int, initial: int):
    self.enabled = _is_process_0()
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
      extra = {'tok/s': f'{metrics["tokens_per_sec"]:.0f}'} if 'tokens_per_sec' in metrics else {}
      self._bar.set_postfix(loss=f'{metrics["loss"]:.4f}', **extra, refresh=False)
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
