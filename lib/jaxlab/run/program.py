"""A run's program: its data, task and layout under jit, built from a config; and the program and state of
a finished run, read from its checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxlab import config as config_lib
from jaxlab import data, models, parallel, tasks
from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.observe import metrics
from jaxlab.parallel import flops, sharding
from jaxlab.run import accumulate, checkpoint, early_stopping, init_from_run, replicas, steps
from jaxlab.tasks.state import TrainState

MAX_SEED = 2**31 - 1  # seeds feed numpy's SeedSequence and jax's PRNGKey: non-negative, 32-bit


def validate(config: ml_collections.ConfigDict) -> None:
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
  config_lib.require(config.replica_group >= 0, f'replica_group must be >= 0 (0: all replicas vmapped together), '
                                                f'got {config.replica_group}')
  config_lib.require(0 <= config.seed and config.seed + config.num_replicas - 1 <= MAX_SEED,
                     f'seed must be in [0, {MAX_SEED - config.num_replicas + 1}], got {config.seed}')
  init_from_run.validate(config.init)
  # Before any data file is read: a config error is reported whether or not the data are there.
  data.check(config.data)
  models.check(config.model)
  tasks.check(config)


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
  eval_step: Callable  # (state, batch, active) -> sums; active None: every replica
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
                       f'classes or vocabulary); build a program for it: program.build(config, workdir)')
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
  validate(config)
  mesh = parallel.make_mesh(config.mesh)
  source, run_source = _sources(config, workdir)
  _check_batch_sizes(config, mesh, source)
  config_lib.require(not config.train.early_stopping_metric or 'validation' in source.eval_splits,
                     'train.early_stopping_metric needs a validation split: set data.validation_size > 0')
  task = tasks.make(config, source, read_run)
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
    task = replicas.ReplicatedTask(task, config.num_replicas, full_batch, config.replica_group)
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
  totals_sharding = parallel.tree_shardings(steps.zero_totals(abstract_metrics), replicated)
  batches_per_call = 1 if full_batch else config.train.steps_per_call
  call_batch_sharding = parallel.stacked(train_batch_sharding) if batches_per_call > 1 else train_batch_sharding
  train_step = steps.multi_step(steps.accumulating(task.train_step), config.train.steps_per_call,
                                batches_per_call > 1)

  def eval_step(state: TrainState, batch: Any, active: jax.Array | None) -> Any:
    """Replicas that are not `active` (their early stopping ended) are not evaluated; None: all are."""
    return task.eval_step(state, batch) if active is None else task.eval_step(state, batch, active)

  return Program(
      config_json=config.to_json(), data_facts=_data_facts(source), source=run_source, task=task, mesh=mesh,
      per_replica=per_replica, rng=rng, example=example, abstract=abstract,
      state_sharding=state_sharding, batch_sharding=batch_sharding, train_batch_sharding=train_batch_sharding,
      call_batch_sharding=call_batch_sharding, batches_per_call=batches_per_call,
      init=jax.jit(task.init, out_shardings=state_sharding),
      zero_totals=jax.jit(functools.partial(steps.zero_totals, abstract_metrics), out_shardings=totals_sharding),
      train_step=jax.jit(train_step, in_shardings=(state_sharding, totals_sharding, call_batch_sharding, replicated,
                                                   replicated),
                         out_shardings=(state_sharding, totals_sharding), donate_argnums=(0, 1)),
      eval_step=jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding, replicated), out_shardings=replicated),
      stacked_eval_step=jax.jit(eval_step, in_shardings=(state_sharding, train_batch_sharding, replicated),
                                out_shardings=replicated),
      flops_per_step=flops_per_step, peak_flops=_peak_flops(config))


def lowered_train_step(program: Program, config: ml_collections.ConfigDict) -> Any:
  """`program`'s training step (built for `config`) lowered for one step per call: for XLA's cost analysis, and
  compiled, its memory analysis."""
  state = checkpoint.abstract_with_shardings(program.abstract, program.state_sharding)
  batch = next(steps.device_batches(program, 0, config.train))
  return program.train_step.lower(state, jax.eval_shape(program.zero_totals), batch, None, 1)


def compiled_memory(config: ml_collections.ConfigDict) -> Any:
  """XLA's memory analysis of the compiled training step (per device): arguments, outputs, temporaries."""
  return lowered_train_step(build(config), config).compile().memory_analysis()


def restore_newest(program: Program, ckpt: checkpoint.Checkpointer, config: ml_collections.ConfigDict,
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
  ckpt = checkpoint.Checkpointer(str(directory), keep=1_000_000)  # never deletes: it only reads
  try:
    check_saved_config(ckpt, config, workdir, step)
    program = build(config, workdir)
    found = _restore_step(program, ckpt, config, workdir, step) if step else restore_newest(
        program, ckpt, config, workdir, resuming=False)
  finally:
    ckpt.close()
  if found is None:
    raise JaxlabError(f'{directory} holds no checkpoint')
  return found[0], program, found[1]


def check_saved_config(ckpt: checkpoint.Checkpointer, config: ml_collections.ConfigDict, workdir: str,
                       step: int = 0) -> None:
  """Refuses `config` unless the checkpoint to be read (`step`, else the newest whose config reads) was saved
  by it. Readers call it before building anything: a model that a run folder's config.json names is code,
  imported only once the checkpoint vouches for it."""
  for candidate in [step] if step else sorted(ckpt.all_steps(), reverse=True):
    try:
      saved, _ = ckpt.read_meta(candidate)
    except checkpoint.CorruptCheckpointError:
      continue
    config_lib.check_same(saved, config, f'the checkpoint of step {candidate} in {workdir} was saved by a '
                                         'different config')
    return


def _restore_step(program: Program, ckpt: checkpoint.Checkpointer, config: ml_collections.ConfigDict,
                  workdir: str, step: int) -> tuple[int, TrainState]:
  saved_steps = ckpt.all_steps()
  config_lib.require(step in saved_steps, f'{ckpt.directory} has no checkpoint of step {step}; it has '
                                          f'{", ".join(map(str, sorted(saved_steps))) or "none"}')
  saved, meta = ckpt.read_meta(step)
  config_lib.check_same(saved, config, f'the checkpoint of step {step} in {workdir} was saved by a different config')
  return step, ckpt.restore(step, checkpoint.abstract_with_shardings(program.abstract, program.state_sharding), meta)


def restore_run(workdir: str, which: str = 'newest', step: int = 0, what: str = 'init.workdir') -> tuple[
    int, ml_collections.ConfigDict, Any, TrainState]:
  """(step, config, data source, state) of another run's checkpoint (`which`, or `step` > 0), read
  onto this process's devices with everything replicated; its replicas' leading axis kept."""
  source_config = config_lib.read_run(workdir)
  with source_config.unlocked():
    # Uncompared keys: read onto all devices, everything replicated, the batch unsplit; no attacks.
    source_config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=-1))
    source_config.sharding_rules = ()
    source_config.eval.attack_eps = ()
  try:
    found, program, state = restore_checkpoint(source_config, workdir, which, step)
  except JaxlabError as e:
    raise ConfigError(f'{what}: {e}') from None
  return found, source_config, program.source, state


def read_run(workdir: str, what: str) -> tasks.FinishedRun:
  """The newest checkpoint of the run in `workdir` as a task built on it takes it (`what` names it in errors)."""
  _, config, source, state = restore_run(workdir, what=what)
  variables = init_from_run.first_replica(config, {'params': state.params, **state.model_state})
  return tasks.FinishedRun(config, source.num_classes, variables)


def load_init(config: ml_collections.ConfigDict, state: TrainState, workdir: str) -> TrainState:
  """`state`, fresh, with the arrays `config.init` names loaded from the checkpoint of the run `init.workdir`."""
  init = config.init
  init_from_run.check_not_itself(init, workdir)
  step, source_config, _, source_state = restore_run(init.workdir, init.checkpoint, init.step)
  return init_from_run.load(config, state, step, source_config, source_state)
