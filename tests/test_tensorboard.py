"""TensorBoard shows exactly what metrics.jsonl holds, also after a SIGKILL and a resume."""

import json
import signal
import subprocess
import sys
import time

from conftest import LAUNCH, ROOT, launch

ARGS = ['--config.data.num_samples=1000', '--config.data.batch_size=40', '--config.data.eval_batch_size=200',
        '--config.model.channels=8', '--config.train.num_steps=1000', '--config.train.log_every=20',
        '--config.train.eval_every=500', '--config.train.checkpoint_every=500']


def _scalars(workdir):
  """{tag: [(step, value), ...]} as TensorBoard itself reads the event files (its purge rules included)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(workdir / 'tensorboard'), size_guidance={'scalars': 0})
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()['scalars']}


def test_events_match_metrics_jsonl_after_a_sigkill_and_resume(tmp_path):
  """tensorboardX queues 10 events before writing: without a flush at the checkpoint, a kill just after it
  loses points the resumed run never logs again. (TensorBoard's reader drops the re-logged points after
  the checkpoint by itself, seeing steps go back; `purge_step` says the same for other readers.)"""
  workdir = tmp_path / 'run'
  proc = subprocess.Popen([sys.executable, LAUNCH, *ARGS, f'--workdir={workdir}'], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = workdir / 'metrics.jsonl'
  committed = workdir / 'checkpoints' / '500' / 'commit_success.txt'
  deadline = time.time() + 120
  try:  # killed as soon as its first checkpoint is on disk: the points before it must all be in the events
    while not committed.exists() and time.time() < deadline:
      time.sleep(0.01)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert committed.exists()
  resumed = launch(*ARGS, f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr
  assert 'Resuming from step ' in resumed.stdout

  records = [json.loads(line) for line in metrics.read_text().splitlines()]
  expected = {}
  for r in records:
    for name, value in r.items():
      if name not in ('step', 'split', 'time') and isinstance(value, float):
        expected.setdefault(f'{r["split"]}/{name}', {})[r['step']] = value
  shown = _scalars(workdir)
  assert set(shown) == set(expected)
  for tag, points in expected.items():
    assert sorted(step for step, _ in shown[tag]) == sorted(points), tag  # every step once: none lost, none twice
    for step, value in shown[tag]:
      assert abs(value - points[step]) <= 1e-6 * max(1.0, abs(points[step])), (tag, step)


def test_every_point_up_to_a_checkpoint_is_on_disk_when_the_checkpoint_is(tmp_path):
  """What a SIGKILL right after a checkpoint would find: events read from disk at that moment."""
  from conftest import tiny_config

  from jaxlab.run import train
  workdir = tmp_path / 'run'
  seen = []

  def at_checkpoint(step, state):
    if step % 100 == 0:
      records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
      on_disk = _scalars(workdir).get('train/loss', [])
      seen.append((step, sorted(s for s, _ in on_disk), [r['step'] for r in records if r['split'] == 'train']))

  train.train(tiny_config(**{'train.num_steps': 300, 'train.log_every': 5, 'train.checkpoint_every': 100}), str(workdir),
              hooks=[at_checkpoint])
  assert [step for step, _, _ in seen] == [100, 200, 300]
  for step, on_disk, logged in seen:
    assert on_disk == logged == list(range(5, step + 1, 5)), step


def test_showcase_texts_and_images_go_to_files_and_tensorboard(tmp_path):
  import numpy as np
  from PIL import Image
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  from jaxlab.observe.logging import MetricWriter
  image = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
  writer = MetricWriter(str(tmp_path))
  written = writer.write_showcase(40, {'sample_0': 'To be,\nor not', 'digits': image})
  writer.close()
  assert [p.rsplit('/', 1)[1] for p in written] == ['step_00000040_sample_0.txt', 'step_00000040_digits.png']
  assert (tmp_path / 'samples' / 'step_00000040_sample_0.txt').read_text() == 'To be,\nor not'
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'samples' / 'step_00000040_digits.png')), image)
  events = EventAccumulator(str(tmp_path / 'tensorboard'), size_guidance={'images': 0, 'tensors': 0})
  events.Reload()
  shown = events.Images('digits')[0]
  assert shown.step == 40 and (shown.width, shown.height) == (5, 6)
  text = events.Tensors('sample_0/text_summary')[0]
  assert text.step == 40 and 'To be,\nor not' in text.tensor_proto.string_val[0].decode()


def test_a_flush_puts_every_point_written_before_it_on_disk(tmp_path):
  """tensorboardX's own flush() writes out its file, not the events still queued for its writer thread."""
  from jaxlab.observe.logging import MetricWriter
  writer = MetricWriter(str(tmp_path))
  for step in range(1, 2001):
    writer.write(step, 'train', {'loss': float(step)})
  writer.flush()
  shown = _scalars(tmp_path)  # what a SIGKILL now would leave
  writer.close()
  assert [step for step, _ in shown['train/loss']] == list(range(1, 2001))


def test_a_run_resumed_in_the_same_second_keeps_the_interrupted_runs_events(tmp_path):
  """Event file names carry only the second: a resumed run must not reuse (and overwrite) a name."""
  from jaxlab.observe.logging import MetricWriter
  first = MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    first.write(step, 'train', {'loss': float(step)})
  first.flush()
  first.write(4, 'train', {'loss': 4.0})  # after the checkpoint at 3: dropped on resume
  first.close()
  resumed = MetricWriter(str(tmp_path), start_step=3)
  for step in (4, 5):
    resumed.write(step, 'train', {'loss': 10.0 * step})
  resumed.close()
  assert _scalars(tmp_path)['train/loss'] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
