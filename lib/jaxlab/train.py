"""THE training loop: init -> (resume) -> steps -> eval -> checkpoint -> logs, for every task."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from jaxlab import accumulate, checkpoint, data, early_stopping, flops, metrics, optim, parallel, replicas, sharding
from jaxlab import compile_ahead, curves, init_from_run, pruning, stop, tasks, trackers
from jaxlab import config as config_lib
from jaxlab.errors import JaxlabError, NonFiniteLossError
from jaxlab.logging import MetricWriter, Progress, format_metrics
from jaxlab.state import TrainState

Hook = Callable[[int, TrainState], None]
SUMMARY_FILE = 'summary.json'
MAX_SEED = 2**31 - 1  # seeds feed numpy's SeedSequence and jax's PRNGKey: non-negative, 32-bit


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _zero_totals(metrics: Any) -> dict[str, Any]:
  return {'sums': jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics), 'count': jnp.zeros((), jnp.int32),
          'first_nonfinite': jnp.full((), -1, jnp.int32), 'nonfinite_loss': jnp.zeros((), jnp.float32)}


def _accumulating(train_step: Callable) -> Callable:
  """Wraps a task's step to sum its metrics on the device and note the first non-finite loss.

  One small fetch per log line instead of one per step and metric (~13 µs/step saved on CPU).
  """
  def step(state: TrainState, totals: dict[str, Any], batch: Any):
    new_state, metrics = train_step(state, batch)
    keep = (totals['first_nonfinite'] >= 0) | jnp.all(jnp.isfinite(metrics['loss']))
    return new_state, {'sums': jax.tree.map(jnp.add, totals['sums'], metrics), 'count': totals['count'] + 1,
                       'first_nonfinite': jnp.where(keep, totals['first_nonfinite'], jnp.ravel(new_state.step)[0]),
                       'nonfinite_loss': jnp.where(keep, totals['nonfinite_loss'], jnp.sum(metrics['loss']))}
  return step


def _freezing(train_step: Callable) -> Callable:
  """Adds `active` (one bool per replica, or None: all): a replica whose early stopping has ended keeps its state."""
  def step(state: TrainState, totals: dict[str, Any], batch: Any, active: jax.Array | None):
    new_state, totals = train_step(state, totals, batch)
    return (new_state if active is None else early_stopping.select(active, new_state, state)), totals
  return step


def _multi_step(train_step: Callable, steps_per_call: int, stacked_batches: bool) -> Callable:
  """Adds `count`: the number of steps this call runs (one dispatch for several small steps).

  `batch` is one batch per step stacked on a leading axis, or (`stacked_batches` False: a full-batch
  source) the one batch every step sees. With steps_per_call 1 the call is one step, as it was.
  """
  def one(state: TrainState, totals: dict[str, Any], batch: Any, active: jax.Array | None, count: jax.Array):
    del count  # always 1
    return train_step(state, totals, batch, active)

  def steps(state: TrainState, totals: dict[str, Any], batch: Any, active: jax.Array | None, count: jax.Array):
    def body(i, carry):
      step_batch = jax.tree.map(lambda b: b[i], batch) if stacked_batches else batch
      return train_step(*carry, step_batch, active)
    return jax.lax.fori_loop(0, count, body, (state, totals))
  return one if steps_per_call == 1 else steps


def _call_lengths(start: int, t: ml_collections.ConfigDict) -> Iterator[int]:
  """Steps of each call of the compiled step: up to train.steps_per_call, ending at every log, evaluation
  and checkpoint step and at the last."""
  step = start
  while step < t.num_steps:
    length = min(t.steps_per_call, t.num_steps - step)
    for every in (t.log_every, t.eval_every, t.checkpoint_every):
      length = min(length, every - step % every) if every > 0 else length
    yield length
    step += length


def _stacked(batches: Iterator[Any], lengths: Iterator[int], size: int) -> Iterator[Any]:
  """The batches of each call stacked on a new leading axis of `size`, padded with copies of the last (unused)."""
  for length in lengths:
    group = list(itertools.islice(batches, length))
    yield jax.tree.map(lambda *xs: np.stack(xs), *group, *group[-1:] * (size - length))


def _report(metrics: dict[str, Any], per_replica: bool) -> dict[str, Any]:
  """Scalars as floats; per-replica values as their mean plus the list under '<name>_replicas'.

  Array-valued metrics (a confusion matrix) are not scalars to log and are left out.
  """
  out = {}
  for name, value in metrics.items():
    value = np.asarray(value, np.float64)
    if value.ndim > per_replica:
      continue
    out[name] = float(value.mean())
    if per_replica:
      out[f'{name}_replicas'] = value.tolist()
  return out


def _due(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def _validate(config: ml_collections.ConfigDict) -> None:
  t = config.train
  config_lib.require(t.num_steps > 0, f'train.num_steps must be positive, got {t.num_steps}')
  for key in ('log_every', 'eval_every', 'checkpoint_every'):
    config_lib.require(t[key] >= 0, f'train.{key} must be >= 0 (0 means only at the end), got {t[key]}')
  config_lib.require(t.device_prefetch >= 0, f'train.device_prefetch must be >= 0, got {t.device_prefetch}')
  config_lib.require(t.grad_accum_steps >= 1, f'train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}')
  config_lib.require(t.steps_per_call >= 1, f'train.steps_per_call must be >= 1, got {t.steps_per_call}')
  config_lib.require(t.peak_flops >= 0, f'train.peak_flops must be >= 0 (0: look the chip up), got {t.peak_flops}')
  config_lib.require(t.keep_checkpoints > 0, f'train.keep_checkpoints must be positive, got {t.keep_checkpoints}')
  for key in ('batch_size', 'eval_batch_size'):
    config_lib.require(config.data[key] > 0, f'data.{key} must be positive, got {config.data[key]}')
  config_lib.require(config.num_replicas >= 1, f'num_replicas must be >= 1, got {config.num_replicas}')
  config_lib.require(0 <= config.seed and config.seed + config.num_replicas - 1 <= MAX_SEED,
                     f'seed must be in [0, {MAX_SEED - config.num_replicas + 1}], got {config.seed}')
  init_from_run.validate(config.init)


@dataclasses.dataclass
class Program:
  """What a run computes with: its data, its task under jit with explicit shardings, its layout.

  `train(config, workdir, program=build(config))` runs it; passing the same program to several runs
  of one config in a process reuses its traced and compiled programs (no tracing, lowering or cache read).
  The programs close over what was read when it was built: the data's classes and vocabulary (checked
  against each run's data) and a distillation teacher (not checked: build again after changing it).
  """

  config_json: str  # the config it was built from
  data_facts: Any  # what the task took from its data source (_data_facts)
  source: Any
  task: Any
  mesh: Any
  per_replica: bool
  rng: jax.Array
  example: Any
  abstract: TrainState
  state_sharding: Any
  batch_sharding: Any
  train_batch_sharding: Any
  call_batch_sharding: Any  # of what one call of train_step takes: one batch, or a stack of them
  batches_per_call: int  # > 1: train_step takes that many batches stacked (train.steps_per_call)
  init: Callable  # (rng, example) -> TrainState, laid out by state_sharding
  zero_totals: Callable
  train_step: Callable  # (state, totals, batch, active, count) -> (state, totals), `count` steps in one call
  eval_step: Callable
  stacked_eval_step: Callable  # for evaluation batches with a replica axis (ReplicatedSource.per_replica_splits)
  flops_per_step: float | None  # model FLOPs of one training step, where the task counts them
  peak_flops: float | None  # of all devices together, where the chip is known

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    config_lib.require(config_lib.to_dict(config) == json.loads(self.config_json),
                       'the program passed to train was built from a different config; build one for this config')

  def for_run(self, config: ml_collections.ConfigDict, workdir: str) -> Program:
    """This program with the data source of a run of `config` (checked by `check_config` first) in `workdir`,
    whose data must be the one built with."""
    base, source = _sources(config, workdir)
    config_lib.require(_data_facts(base) == self.data_facts,
                       f'the data of a run in {workdir} differs from the data the program was built with (shapes, '
                       f'classes or vocabulary); build a program for it: train.build(config, workdir)')
    return dataclasses.replace(self, source=source)

  def init_state(self) -> TrainState:
    return self.init(self.rng, self.example)

  def summarize(self, sums: dict[str, Any]) -> dict[str, Any]:
    """Evaluation sums -> metrics: the task's own rule (perplexity...) where it has one."""
    return getattr(self.task, 'summarize', metrics.summarize)(sums)

  def eval_step_for(self, split: str) -> tuple[Callable, Any]:
    """(jitted evaluation step, batch sharding) for the batches of `split`."""
    if split in getattr(self.source, 'per_replica_splits', ()):
      return self.stacked_eval_step, self.train_batch_sharding
    return self.eval_step, self.batch_sharding

  def state_bytes(self) -> dict[str, int]:
    """Bytes of the TrainState (parameters, optimizer state...): in all, and on the most loaded device."""
    return {'state_bytes': sharding.total_bytes(self.abstract),
            'state_bytes_per_device': sharding.bytes_per_device(self.abstract, self.state_sharding)}


def _check_batch_sizes(config: ml_collections.ConfigDict, mesh: Any, source: Any) -> None:
  if getattr(source, 'full_batch', False):
    return  # the whole dataset is every batch, on every device
  dp, k = parallel.data_parallel_size(mesh), config.train.grad_accum_steps
  devices = f'the {dp} devices of the data and fsdp axes'
  for key, ways, what in (('batch_size', dp * k, devices + (f' times train.grad_accum_steps {k}' if k > 1 else '')),
                          ('eval_batch_size', dp, devices)):
    config_lib.require(config.data[key] % ways == 0, f'data.{key} {config.data[key]} is not divisible by {what}')


def _state_specs(config: ml_collections.ConfigDict, task: Any, abstract: TrainState, example: Any, mesh: Any) -> Any:
  """PartitionSpecs of one run's TrainState (shapes `abstract`): parameters by the sharding rules, optimizer state alike."""
  param_axes = getattr(task, 'param_axes', None)
  rules = sharding.rules_from_config(config.sharding_rules)
  return sharding.state_specs(abstract, param_axes(example) if param_axes else None, dict(mesh.shape), rules)


def _peak_flops(config: ml_collections.ConfigDict) -> float | None:
  per_device = config.train.peak_flops or flops.peak_per_device(jax.devices()[0].device_kind,
                                                                 config.model.get('dtype', 'float32'))
  return per_device * jax.device_count() if per_device else None


def _sources(config: ml_collections.ConfigDict, workdir: str | None) -> tuple[Any, Any]:
  """(replica 0's data source, the run's: every replica's stacked where num_replicas > 1)."""
  base = data.make_source(replicas.base_data(config), config.seed, workdir)
  return base, replicas.replicate(config, base, workdir) if config.num_replicas > 1 else base


def _data_facts(source: Any) -> tuple[Any, ...]:
  """What a task takes from its data source: the example batch's shapes and dtypes, the classes, the vocabulary."""
  shapes = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype.name), source.example_batch())
  return shapes, getattr(source, 'num_classes', None), getattr(source, 'vocab', None)


def build(config: ml_collections.ConfigDict, workdir: str | None = None) -> Program:
  """The program of a run of `config`; `workdir`: where its data source keeps what resuming reuses."""
  _validate(config)
  mesh = parallel.make_mesh(config.mesh)
  source, run_source = _sources(config, workdir)
  _check_batch_sizes(config, mesh, source)
  config_lib.require(not config.train.early_stopping_metric or 'validation' in source.eval_splits,
                     'train.early_stopping_metric needs a validation split: set data.validation_size > 0')
  task = tasks.make(config, source)
  if config.train.grad_accum_steps > 1:
    task = accumulate.Accumulating(task, config.train.grad_accum_steps)
  example = source.example_batch()
  one_run = jax.eval_shape(task.init, jax.random.PRNGKey(0), example)  # shapes of one seed's state
  specs = _state_specs(config, task, one_run, example, mesh)
  count_flops = getattr(task, 'flops_per_step', None)
  flops_per_step = count_flops(one_run.params) if count_flops else None
  replicated = parallel.replicated(mesh)
  full_batch = getattr(source, 'full_batch', False)
  batch_sharding = replicated if full_batch else parallel.batch_sharding(mesh)
  train_batch_sharding = batch_sharding
  rng = jax.random.PRNGKey(config.seed)
  per_replica = config.num_replicas > 1
  if per_replica:
    task = replicas.ReplicatedTask(task, config.num_replicas, full_batch)
    rng = replicas.init_keys(config.seed, config.num_replicas)
    train_batch_sharding = batch_sharding if full_batch else parallel.replica_batch_sharding(mesh)
    specs = sharding.with_leading_axis(specs)
  abstract = jax.eval_shape(task.init, rng, example) if per_replica else one_run
  state_sharding = sharding.named(specs, mesh)
  # A batch that splits into the micro-batches of grad_accum_steps, stacked per replica.
  train_example = jax.tree.map(lambda x: np.concatenate([x] * config.train.grad_accum_steps), example)
  if per_replica and not full_batch:
    train_example = jax.tree.map(lambda x: np.stack([x] * config.num_replicas), train_example)
  abstract_metrics = jax.eval_shape(task.train_step, abstract, train_example)[1]
  totals_sharding = parallel.tree_shardings(_zero_totals(abstract_metrics), replicated)
  batches_per_call = 1 if full_batch else config.train.steps_per_call
  call_batch_sharding = parallel.stacked(train_batch_sharding) if batches_per_call > 1 else train_batch_sharding
  steps = _multi_step(_freezing(_accumulating(task.train_step)), config.train.steps_per_call, batches_per_call > 1)
  return Program(
      config_json=config.to_json(), data_facts=_data_facts(source), source=run_source, task=task, mesh=mesh,
      per_replica=per_replica, rng=rng, example=example, abstract=abstract,
      state_sharding=state_sharding, batch_sharding=batch_sharding, train_batch_sharding=train_batch_sharding,
      call_batch_sharding=call_batch_sharding, batches_per_call=batches_per_call,
      init=jax.jit(task.init, out_shardings=state_sharding),
      zero_totals=jax.jit(functools.partial(_zero_totals, abstract_metrics), out_shardings=totals_sharding),
      train_step=jax.jit(steps, in_shardings=(state_sharding, totals_sharding, call_batch_sharding, replicated,
                                              replicated),
                         out_shardings=(state_sharding, totals_sharding), donate_argnums=(0, 1)),
      eval_step=jax.jit(task.eval_step, in_shardings=(state_sharding, batch_sharding), out_shardings=replicated),
      stacked_eval_step=jax.jit(task.eval_step, in_shardings=(state_sharding, train_batch_sharding),
                                out_shardings=replicated),
      flops_per_step=flops_per_step, peak_flops=_peak_flops(config))


def compiled_memory(config: ml_collections.ConfigDict) -> Any:
  """XLA's memory analysis of the compiled training step (per device): arguments, outputs, temporaries."""
  program = build(config)
  state = checkpoint.abstract_with_shardings(program.abstract, program.state_sharding)
  batch = next(_device_batches(program, 0, config.train))
  totals = jax.eval_shape(program.zero_totals)
  return program.train_step.lower(state, totals, batch, None, 1).compile().memory_analysis()


def _restore_newest(program: Program, ckpt: checkpoint.Checkpointer, config: ml_collections.ConfigDict,
                    workdir: str, resuming: bool) -> tuple[int, TrainState] | None:
  """(step, state) of the newest intact checkpoint whose own config is this run's; None if there is none.
  Newer ones that fail to restore are moved aside when `resuming` (a reader leaves them)."""
  def accept(step: int, saved: dict[str, Any]) -> None:
    config_lib.check_same(saved, config, f'the checkpoint of step {step} in {workdir} was saved by a different config')

  target = checkpoint.abstract_with_shardings(program.abstract, program.state_sharding)
  found = ckpt.restore_newest_good(target, accept, move_aside=resuming)
  return None if found is None else (found[0], found[1])


CHECKPOINT_DIRS = {'newest': 'checkpoints', 'best': early_stopping.BEST_DIR}  # which -> folder of the workdir


def restore_checkpoint(config: ml_collections.ConfigDict, workdir: str, which: str = 'newest',
                       step: int = 0) -> tuple[int, Program, TrainState]:
  """(step, program, state) of `workdir`'s newest intact checkpoint (`which='best'`: of its early-stopping
  best; `step` > 0: that step), built under `config`.

  `config` may differ from the run's own in the keys that do not change what was trained
  (config.UNCOMPARED_KEYS), e.g. other `eval` settings for a finished run.
  """
  config_lib.require(which in CHECKPOINT_DIRS, f'checkpoint must be one of {", ".join(CHECKPOINT_DIRS)}, got {which!r}')
  directory = epath.Path(workdir) / CHECKPOINT_DIRS[which]
  if not directory.exists():
    raise JaxlabError(f'{workdir} has no checkpoint to load (no {CHECKPOINT_DIRS[which]}/ folder' +
                      ('; the best one is kept only with train.early_stopping_metric)' if which == 'best' else ')'))
  program = build(config, workdir)
  ckpt = checkpoint.Checkpointer(str(directory), keep=1_000_000)  # never deletes: it only reads
  try:
    found = _restore_step(program, ckpt, config, workdir, step) if step else _restore_newest(
        program, ckpt, config, workdir, resuming=False)
  finally:
    ckpt.close()
  if found is None:
    raise JaxlabError(f'{directory} holds no checkpoint')
  return found[0], program, found[1]


def _restore_step(program: Program, ckpt: checkpoint.Checkpointer, config: ml_collections.ConfigDict,
                  workdir: str, step: int) -> tuple[int, TrainState]:
  steps = ckpt.all_steps()
  config_lib.require(step in steps, f'{ckpt.directory} has no checkpoint of step {step}; it has '
                                    f'{", ".join(map(str, sorted(steps))) or "none"}')
  saved, meta = ckpt.read_meta(step)
  config_lib.check_same(saved, config, f'the checkpoint of step {step} in {workdir} was saved by a different config')
  return step, ckpt.restore(step, checkpoint.abstract_with_shardings(program.abstract, program.state_sharding), meta)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        num_examples: int = 0) -> tuple[int, dict[str, dict[str, Any]]]:
  """(step, {split: metrics and 'examples', their count}) of `workdir`'s newest intact checkpoint,
  evaluated under `config` on the first `num_examples` of each split, in whole batches (0: all)."""
  step, program, state = restore_checkpoint(config, workdir)
  sums = {}
  results = _evaluator(program, sums, -(-num_examples // config.data.eval_batch_size))(state)
  for split, split_sums in sums.items():
    results[split]['examples'] = int(np.max(split_sums['count']))
  return step, results


def _one_step_in_flight() -> bool:
  """Several CPU devices of one process abort in an all-reduce rendezvous once a few hundred
  steps are queued (2 simulated devices on 2 cores, measured); one step in flight avoids it."""
  return jax.default_backend() == 'cpu' and jax.local_device_count() > 1


def _evaluator(program: Program, eval_sums: dict[str, Any],
               max_batches: int = 0) -> Callable[[TrainState], dict[str, dict[str, float]]]:
  """evaluate(state) -> {split: metrics} over the first `max_batches` batches of each split (0: all);
  each split's raw sums are kept in `eval_sums` for the final report."""
  one_in_flight = _one_step_in_flight()

  def evaluate(state: TrainState) -> dict[str, dict[str, float]]:
    results = {}
    for split in program.source.eval_splits:
      sums, (eval_step, sharding) = None, program.eval_step_for(split)
      for batch in itertools.islice(program.source.eval_batches(split), max_batches or None):
        out = eval_step(state, parallel.to_global(batch, sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if one_in_flight:
          jax.block_until_ready(sums)
      eval_sums[split] = jax.device_get(sums)
      results[split] = _report(program.summarize(eval_sums[split]), program.per_replica)
    return results
  return evaluate


def _compile_evaluation(program: Program, states: Any) -> None:
  """Compiles the evaluation step for the first batch of each split (all of a split's batches have its shape)."""
  for split in program.source.eval_splits:
    if split in getattr(program.source, 'per_replica_splits', ()):
      continue  # its first batch needs every replica's whole split read
    eval_step, sharding = program.eval_step_for(split)
    batch = next(iter(program.source.eval_batches(split)), None)
    if batch is not None:
      compile_ahead.compile_for(eval_step, states, compile_ahead.abstract(parallel.to_global(batch, sharding)))


def _device_batches(program: Program, start: int, t: ml_collections.ConfigDict) -> Iterator[Any]:
  """What each call of the training step takes from `start` on: a batch, or a stack of them."""
  batches = program.source.train_batches(start)
  if program.batches_per_call > 1:
    batches = _stacked(batches, _call_lengths(start, t), program.batches_per_call)
  # On CPU, device memory is host memory: jit reading the numpy batch itself is ~5 % faster
  # (MNIST-1D CNN, measured) than copying batches ahead.
  if t.device_prefetch > 0 and jax.default_backend() != 'cpu':
    return parallel.prefetch_to_devices(batches, program.call_batch_sharding, t.device_prefetch)
  return (parallel.to_global(b, program.call_batch_sharding) for b in batches)


def train(config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False,
          hooks: Sequence[Hook] = (), program: Program | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint; returns the summary.

  The workdir is held for the whole run (a second run on it is refused). `hooks` are called as
  hook(step, state) after every call of the training step: every step unless train.steps_per_call > 1.
  `program`: `build(config)`'s, to run several times in one process without tracing or compiling again.
  """
  _validate(config)
  trackers.check(config)
  if program is not None:
    program.check_config(config)  # before the workdir is taken
  installed = jax.process_count() == 1 and stop.install()
  lock = None
  try:
    lock = config_lib.prepare_workdir(workdir, config, restart=restart)
    program = build(config, workdir) if program is None else program.for_run(config, workdir)
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
    self._evaluate = _evaluator(program, self.eval_sums)
    self.totals = program.zero_totals()
    self.clock, self.paused = time.perf_counter(), 0.0  # paused: evaluating and checkpointing since the last log

  def _start(self) -> None:
    """The step and state to start from (the newest checkpoint's, else initialised while the training
    step compiles), the batches from there on, and the run's programs compiling ahead."""
    program, config = self.program, self.config
    try:
      found = _restore_newest(program, self.ckpt, config, self.workdir, resuming=True)
    except checkpoint.CorruptCheckpointError as e:
      raise checkpoint.CorruptCheckpointError(f'{e}. Fix the cause, or pass --restart to move the run aside and '
                                              'start over') from None
    self.start = self.step = found[0] if found else 0
    self.best = early_stopping.from_config(self.workdir, config)
    self.active = self._active()
    batches = _device_batches(program, self.start, config.train)
    first = next(batches)
    self.batches = itertools.chain([first], batches)
    state = found[1] if found else None
    if state is None and config.init.workdir:
      state = init_from_run.load(config, program.init_state(), self.workdir)
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
    self.ahead.submit('save', lambda: (compile_ahead.compile_for(_all_finite, states.params),
                                       checkpoint.compile_checksums(states)))
    self.ahead.submit('evaluate', lambda: _compile_evaluation(program, states))

  def evaluate(self, state: TrainState) -> dict[str, dict[str, float]]:
    self.ahead.wait('evaluate')  # its programs compiled ahead are used, not compiled again
    return self._evaluate(state)

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
    means = _report({k: v / count for k, v in values['sums'].items()}, self.program.per_replica)
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
    if not bool(_all_finite(self.state.params)):
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
    results = self.evaluate(self.state)
    t = self.config.train
    # Evaluations more frequent than log lines (every epoch of a graph) are printed with the log lines only.
    show = last or t.eval_every >= t.log_every or _due(self.step, t.log_every)
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
    one_in_flight = _one_step_in_flight()
    results, signal_name = {}, None
    stopped_early = self.best is not None and self.best.should_stop(self.step)
    self.ahead.wait('train_step')
    for length in () if stopped_early else _call_lengths(self.step, t):
      if one_in_flight:
        jax.block_until_ready(self.totals)
      self.state, self.totals = program.train_step(self.state, self.totals, next(self.batches), self.active, length)
      self.step += length
      self.ckpt.check()
      last = self.step == t.num_steps
      signal_name = None if last else stop.requested(self.step, jax.process_count() > 1)
      if _due(self.step, t.log_every) or last:
        self.flush()
      if _due(self.step, t.eval_every) or last:
        results, stopped_early = self._evaluate_and_log(last)
      if _due(self.step, t.checkpoint_every) or last or signal_name or stopped_early:
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
