"""Evaluation of a state over every evaluation split: the loop's, and a finished run's checkpoint."""

from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab import parallel
from jaxlab.run import compile_ahead, steps, stop
from jaxlab.run.program import Program, restore_checkpoint
from jaxlab.tasks.state import TrainState


def report(metrics: dict[str, Any], per_replica: bool) -> dict[str, Any]:
  """Scalars as floats; per-replica values as their mean plus the list under '<name>_replicas'.

  The mean is over the replicas that report a number: a stopped replica's training metrics are NaN.
  Array-valued metrics (a confusion matrix) are not scalars to log and are left out.
  """
  out = {}
  for name, value in metrics.items():
    value = np.asarray(value, np.float64)
    if value.ndim > per_replica:
      continue
    reported = value[~np.isnan(value)] if per_replica else value
    out[name] = float(reported.mean()) if reported.size else float('nan')
    if per_replica:
      out[f'{name}_replicas'] = value.tolist()
  return out


def evaluator(program: Program, eval_sums: dict[str, Any], max_batches: int = 0,
              stoppable: bool = False) -> Callable[..., dict[str, dict[str, float]]]:
  """evaluate(state, active=None) -> {split: metrics} over the first `max_batches` batches of each split (0: all);
  each split's raw sums are kept in `eval_sums` for the final report. `active`: the replicas to evaluate (the
  others report NaN; None: all). `stoppable`: a reader's evaluation, which a signal stops after the batch under
  way (see jaxlab.run.stop)."""
  one_in_flight = steps.one_step_in_flight() or stoppable

  def evaluate(state: TrainState, active: jax.Array | None = None) -> dict[str, dict[str, float]]:
    results = {}
    for split in program.source.eval_splits:
      sums, (eval_step, sharding) = None, program.eval_step_for(split)
      for batch in itertools.islice(program.source.eval_batches(split), max_batches or None):
        out = eval_step(state, parallel.to_global(batch, sharding), active)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if one_in_flight:
          jax.block_until_ready(sums)
        if stoppable:
          stop.check()
      eval_sums[split] = jax.device_get(sums)
      results[split] = report(program.summarize(eval_sums[split]), program.per_replica)
    return results
  return evaluate


def compile_evaluation(program: Program, states: Any, active: Any = None) -> None:
  """Compiles the evaluation step for the first batch of each split (all of a split's batches have its shape);
  `active`: the shape of the replicas' flags the loop passes (None: none)."""
  for split in program.source.eval_splits:
    if split in getattr(program.source, 'per_replica_splits', ()):
      continue  # its first batch needs every replica's whole split read
    eval_step, sharding = program.eval_step_for(split)
    batch = next(iter(program.source.eval_batches(split)), None)
    if batch is not None:
      compile_ahead.compile_for(eval_step, states, compile_ahead.abstract(parallel.to_global(batch, sharding)), active)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        num_examples: int = 0) -> tuple[int, dict[str, dict[str, Any]]]:
  """(step, {split: metrics and 'examples', their count}) of `workdir`'s newest intact checkpoint,
  evaluated under `config` on the first `num_examples` of each split, in whole batches (0: all)."""
  step, program, state = restore_checkpoint(config, workdir)
  sums = {}
  results = evaluator(program, sums, -(-num_examples // config.data.eval_batch_size), stoppable=True)(state)
  for split, split_sums in sums.items():
    results[split]['examples'] = int(np.max(split_sums['count']))
  return step, results
