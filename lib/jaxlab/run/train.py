"""THE training loop: init -> (resume) -> steps -> eval -> checkpoint -> logs, for every task."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from jaxlab import config as config_lib
from jaxlab import optim
from jaxlab.errors import JaxlabError, NonFiniteLossError
from jaxlab.observe import curves, metrics, trackers
from jaxlab.observe.logging import MetricWriter, Progress, format_metrics
from jaxlab.optim import pruning
from jaxlab.run import checkpoint, compile_ahead, early_stopping, evaluation, steps, stop, workdir_lock
from jaxlab.run import program as program_lib
from jaxlab.run.program import Program
from jaxlab.tasks.state import TrainState

Hook = Callable[[int, TrainState], None]
SUMMARY_FILE = 'summary.json'


def train(config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False,
          hooks: Sequence[Hook] = (), program: Program | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint; returns the summary.

  The workdir is held for the whole run (a second run on it is refused). `hooks` are called as
  hook(step, state) after every call of the training step: every step unless train.steps_per_call > 1.
  `program`: `program.build(config)`'s, to run several times in one process without tracing or compiling again.
  """
  program_lib.validate(config)
  trackers.check(config)
  if program is not None:
    program.check_config(config)  # before the workdir is taken
  installed = jax.process_count() == 1 and stop.install()
  lock = None
  try:
    lock = workdir_lock.prepare_workdir(workdir, config, restart=restart)
    program = program_lib.build(config, workdir) if program is None else program.for_run(config, workdir)
    return _Run(config, workdir, program).run(hooks)
  finally:
    if lock is not None:
      lock.release()
    if installed:
      stop.uninstall()


class _Run:
  """One call of `train`: the state, its checkpoints and logs, and the loop over steps."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, program: Program):
    self.config, self.workdir, self.program = config, workdir, program
    self.ckpt = checkpoint.Checkpointer(str(epath.Path(workdir) / 'checkpoints'), config.train.keep_checkpoints)
    self.ahead, self.best = compile_ahead.CompileAhead(), None
    try:
      self._start()
      self.trackers = trackers.start(config, workdir, jax.process_index() == 0)
    except BaseException:  # a refused config, no intact checkpoint, a tracker that cannot start, a signal
      for resource in (self.ahead, self.best, self.ckpt):
        if resource is not None:
          resource.close()
      raise
    stop.arm()
    if jax.process_index() == 0:
      config_lib.save(workdir, config)
    self.writer = MetricWriter(workdir, self.start, self.trackers)
    self.progress = Progress(config.train.num_steps, self.start)
    self.eval_sums: dict[str, Any] = {}
    self._evaluate = evaluation.evaluator(program, self.eval_sums)
    self.totals = program.zero_totals()
    self.clock, self.paused = time.perf_counter(), 0.0  # paused: evaluating and checkpointing since the last log

  def _start(self) -> None:
    """The step and state to start from (the newest checkpoint's, else initialised while the training
    step compiles), the batches from there on, and the run's programs compiling ahead."""
    program, config = self.program, self.config
    try:
      found = program_lib.restore_newest(program, self.ckpt, config, self.workdir, resuming=True)
    except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError) as e:
      raise type(e)(f'{e}. Fix the cause, or pass --restart to move the run aside and start over') from None
    self.start = self.step = found[0] if found else 0
    self.best = early_stopping.from_config(self.workdir, config)
    self.active = self._active()
    batches = steps.device_batches(program, self.start, config.train)
    first = next(batches)
    self.batches = itertools.chain([first], batches)
    state = found[1] if found else None
    if state is None and config.init.workdir:
      state = program_lib.load_init(config, program.init_state(), self.workdir)
    self._compile_ahead(state, first)
    self.state = program.init_state() if state is None else state

  def _compile_ahead(self, state: TrainState | None, first_batch: Any) -> None:
    """Queues, on the background thread, the training step (overlapping the initialisation), then the
    checkpoint and evaluation programs (overlapping the first training steps)."""
    program = self.program
    states = (compile_ahead.abstract(program.abstract, program.state_sharding) if state is None
              else compile_ahead.abstract(state))
    totals = jax.eval_shape(program.zero_totals)
    active = compile_ahead.abstract(self.active)
    self.ahead.submit('train_step', lambda: compile_ahead.compile_for(
        program.train_step, states, totals, compile_ahead.abstract(first_batch), active, compile_ahead.PYTHON_INT))
    self.ahead.submit('save', lambda: (compile_ahead.compile_for(steps.all_finite, states.params),
                                       checkpoint.compile_checksums(states)))
    self.ahead.submit('evaluate', lambda: evaluation.compile_evaluation(program, states, active))

  def evaluate(self, state: TrainState, active: jax.Array | None = None) -> dict[str, dict[str, float]]:
    """Every split's metrics; `active`: the replicas still training (the others report NaN), None: all."""
    self.ahead.wait('evaluate')  # its programs compiled ahead are used, not compiled again
    return self._evaluate(state, active)

  def _active(self) -> jax.Array | None:
    """Which replicas still train (early stopping per replica); None: all."""
    if self.best is None or not self.program.per_replica:
      return None
    return jnp.asarray(self.best.active(self.step))

  def _last_good(self) -> str:
    self.ckpt.wait()  # a save still being written counts once it is on disk
    good = self.ckpt.last_good
    return f'step {good} in {self.ckpt.directory}' if good is not None else 'none (no checkpoint was saved)'

  def flush(self) -> None:
    """Reads the summed step metrics off the devices; stops the run on a non-finite loss."""
    # One fetch: the summed metrics and the rate the optimizer applied, read from its state.
    values, rates = jax.device_get((self.totals, optim.learning_rates(self.state.opt_state)))
    count = int(values['count'])
    if not count:
      return
    if values['first_nonfinite'] >= 0:
      raise NonFiniteLossError(f'loss is {float(values["nonfinite_loss"])} at step {int(values["first_nonfinite"])}; '
                               f'training stopped. Last good checkpoint: {self._last_good()}')
    means = evaluation.report({k: v / count for k, v in values['sums'].items()}, self.program.per_replica)
    now = time.perf_counter()
    means.update({k: float(np.mean(v)) for k, v in rates.items()})
    means['steps_per_sec'] = count / max(now - self.clock - self.paused, 1e-9)
    for unit, per_step in getattr(self.program.task, 'items_per_step', {}).items():
      means[f'{unit}_per_sec'] = means['steps_per_sec'] * per_step
    if self.program.flops_per_step:
      means['tflops_per_sec'] = means['steps_per_sec'] * self.program.flops_per_step / 1e12
      if self.program.peak_flops:
        means['mfu'] = means['tflops_per_sec'] * 1e12 / self.program.peak_flops
    self.writer.write(self.step, 'train', means)
    self.progress.update(self.step, means, means['steps_per_sec'])
    self.totals, self.clock, self.paused = self.program.zero_totals(), now, 0.0

  def save(self) -> None:
    self.flush()
    self.ahead.wait('save')
    if not bool(steps.all_finite(self.state.params)):
      raise NonFiniteLossError(f'parameters became NaN/Inf by step {self.step}; not saving them. '
                               f'Last good checkpoint: {self._last_good()}')
    began = time.perf_counter()
    self.writer.flush()  # TensorBoard holds every point up to the checkpoint, as metrics.jsonl does
    if self.best is not None:
      self.best.save(self.step, config_lib.to_dict(self.config))  # first: a checkpoint never outruns its best
    self.ckpt.save(self.step, self.state, config_lib.to_dict(self.config))
    self.paused += time.perf_counter() - began

  def _evaluate_and_log(self, last: bool) -> tuple[dict[str, dict[str, float]], bool]:
    began = time.perf_counter()
    results = self.evaluate(self.state, self.active)
    t = self.config.train
    # Evaluations more frequent than log lines (every epoch of a graph) are printed with the log lines only.
    show = last or t.eval_every >= t.log_every or steps.due(self.step, t.log_every)
    for split, values in results.items():
      self.writer.write(self.step, split, values)
      if show:
        self.progress.message(f'step {self.step} {split}: {format_metrics(values)}')
    showcase = getattr(self.program.task, 'showcase', None)
    if showcase is not None:
      self.writer.write_showcase(self.step, showcase(self.state))
    stopped_early = False
    if self.best is not None:
      self.ahead.wait('save')  # checksums: a best state read back from disk is checked with them
      self.best.update(self.step, results, self.state)
      stopped_early = not last and self.best.should_stop(self.step)
      self._note_stopped_replicas()
    self.paused += time.perf_counter() - began
    return results, stopped_early

  def _note_stopped_replicas(self) -> None:
    if self.active is None:
      return
    was, self.active = np.asarray(self.active), self._active()
    for r in np.flatnonzero(was & ~np.asarray(self.active)):
      self.progress.message(f'replica {r} (seed {self.config.seed + r}) stopped at step {self.step}: no better '
                            f'{self.best.metric} than step {self.best.steps[r]}\'s {self.best.values[r]:.4g} for '
                            f'{self.best.patience} evaluations')

  def loop(self, hooks: Sequence[Hook]) -> tuple[dict[str, dict[str, float]], str | None, bool]:
    """Trains to the end, a stop signal or early stopping; returns (last evaluation, signal, stopped early)."""
    t, program = self.config.train, self.program
    one_in_flight = steps.one_step_in_flight()
    results, signal_name = {}, None
    stopped_early = self.best is not None and self.best.should_stop(self.step)
    self.ahead.wait('train_step')
    for length in () if stopped_early else steps.call_lengths(self.step, t):
      if one_in_flight:
        jax.block_until_ready(self.totals)
      self.state, self.totals = program.train_step(self.state, self.totals, next(self.batches), self.active, length)
      self.step += length
      self.ckpt.check()
      last = self.step == t.num_steps
      signal_name = None if last else stop.requested(self.step, jax.process_count() > 1)
      if steps.due(self.step, t.log_every) or last:
        self.flush()
      if steps.due(self.step, t.eval_every) or last:
        try:
          results, stopped_early = self._evaluate_and_log(last)
        except Exception:
          self.save()  # a failed evaluation costs no training: the next run resumes at this step
          raise
      if steps.due(self.step, t.checkpoint_every) or last or signal_name or stopped_early:
        self.save()
      for hook in hooks:
        hook(self.step, self.state)
      if signal_name:
        self.progress.message(f'Stopped by {signal_name} at step {self.step}; checkpoint saved. '
                              'Run the same command to resume.')
      if signal_name or stopped_early:
        break
    return results, signal_name, stopped_early

  def run(self, hooks: Sequence[Hook]) -> dict[str, Any]:
    num_steps, began = self.config.train.num_steps, time.perf_counter()
    memory = self.program.state_bytes()
    self.progress.message(
        f'{"Resuming from step " + str(self.step) if self.step else "Starting"}: {num_steps} steps on '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s), mesh {dict(self.program.mesh.shape)}, '
        f'state {memory["state_bytes"] / 2**20:.2f} MiB ({memory["state_bytes_per_device"] / 2**20:.2f} MiB per '
        f'device), workdir {self.workdir}')
    outcome = 'failed'
    try:
      results, signal_name, stopped_early = self._train_and_evaluate(hooks)
      summary = self._summary(results, signal_name, stopped_early, time.perf_counter() - began)
      outcome = 'preempted' if signal_name else 'finished'
      return summary
    finally:
      self.trackers.close(outcome)

  def _train_and_evaluate(self, hooks: Sequence[Hook]) -> tuple[dict[str, dict[str, float]], str | None, bool]:
    """The loop and the final evaluation; every writer is closed after them, also when they fail."""
    try:
      with contextlib.ExitStack() as closing:  # closed in reverse
        for resource in (self.ahead, self.best, self.ckpt, self.writer, self.progress):
          if resource is not None:
            closing.callback(resource.close)
        results, signal_name, stopped_early = self.loop(hooks)
        # A stopped run reports no evaluation: an earlier one must not pass for its final result.
        results = {} if signal_name else self._final_results(results, stopped_early)
        self.ckpt.wait()
    except OSError as e:  # a full disk, a vanished mount (also while closing): one line, no traceback
      raise JaxlabError(f'writing {e.filename or "the workdir"} failed: {e.strerror or e}; '
                        f'last good checkpoint: {self._last_good()}') from None
    return results, signal_name, stopped_early

  def _final_results(self, results: dict[str, dict[str, float]], stopped_early: bool) -> dict[str, dict[str, float]]:
    """The evaluation to report: the best checkpoint's with early stopping, else the final state's."""
    best = self.best
    if best is not None and best.step is not None:
      if best.per_replica:
        chosen = f'steps {best.steps.tolist()} ({best.metric} {", ".join(f"{v:.4g}" for v in best.values)})'
      else:
        chosen = f'step {best.step} ({best.metric} {"not recorded" if best.value is None else f"{best.value:.4g}"})'
      self.progress.message(f'{"Stopped early; r" if stopped_early else "R"}estoring the best '
                            f'{"state of each replica" if best.per_replica else "checkpoint"}: {chosen}')
      self.state = best.restore(checkpoint.abstract_with_shardings(self.program.abstract, self.program.state_sharding))
      return self.evaluate(self.state)
    # A run that had already finished reports from its final checkpoint.
    return results or self.evaluate(self.state)

  def _summary(self, results: dict[str, dict[str, float]], signal_name: str | None, stopped_early: bool,
               seconds: float) -> dict[str, Any]:
    """summary.json: step, time, how the run ended, and every metric of the final evaluation."""
    best = self.best
    summary = {'step': self.step, 'num_steps': self.config.train.num_steps, 'preempted': signal_name is not None,
               'stop_signal': signal_name, 'workdir': self.workdir, 'train_seconds': seconds,
               'steps_trained': self.step - self.start, **self.program.state_bytes(),
               **(best.summary(stopped_early) if best is not None else {}),
               **{f'{split}_{k}': v for split, m in results.items() for k, v in m.items()}}
    if self.config.optimizer.prune.sparsity:
      summary['nonzeros'] = pruning.nonzeros(self.state.params)
      self.progress.message('Nonzero parameters:\n' + pruning.format_nonzeros(summary['nonzeros']))
    if jax.process_index() == 0:
      summary_path = epath.Path(self.workdir) / SUMMARY_FILE
      summary_path.write_text(json.dumps(summary, indent=2))
      report_step = best.step if best is not None and best.step is not None and not best.per_replica else self.step
      files = [str(summary_path)]
      for split, sums in (self.eval_sums.items() if results else ()):
        files += metrics.save(self.workdir, split, sums, report_step, self.program.summarize)  # JSON; confusion PNG
      for metric in getattr(self.program.task, 'curve_metrics', ()):
        path = curves.write(self.workdir, metric)  # None: the metric was never logged
        files += [path] if path else []
      self.trackers.finish(summary, files)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
  """The run's final line: steps, time, and every evaluation metric (test accuracy first)."""
  head = (f'{"Preempted at" if summary["preempted"] else "Finished"} step {summary["step"]}/{summary["num_steps"]} '
          f'({summary["steps_trained"]} trained in {summary["train_seconds"]:.1f}s)')
  if summary['preempted']:
    return f'{head} | stopped by {summary.get("stop_signal")}; run the same command to resume | workdir {summary["workdir"]}'
  metrics = {k: v for k, v in summary.items() if k.split('_')[0] in ('test', 'validation')
             and k.endswith(('accuracy', 'loss', 'macro_f1', 'perplexity', 'bits_per_char', 'nll', 'frechet', 'frechet_floor', 'return')) and isinstance(v, float)}
  ordered = sorted(metrics, key=lambda k: (not k.startswith('test'), k))
  parts = [f'{k} {metrics[k]:.2%}' if k.endswith('accuracy') else f'{k} {metrics[k]:.4f}' for k in ordered]
  return ' | '.join([head, *parts, f'workdir {summary["workdir"]}'])


def define_command() -> Callable[[Any], None]:
  """`train` (the default command; no flags of its own): trains --config in --workdir, prints the summary line."""
  def command(invocation: Any) -> None:
    lead = jax.process_index() == 0  # every process of a multi-process job would print the same
    if lead:
      print(invocation.config, flush=True)
    summary = train(invocation.config, invocation.workdir(), restart=invocation.restart)
    if lead:
      print(format_summary(summary), flush=True)
  return command
