"""Orbax checkpoints of the TrainState, the run's config and a content checksum, in <workdir>/checkpoints.

Every save also stores `checksum(state)`: per leaf, two position-weighted sums of its bits
computed on the devices in uint32 arithmetic. Integer sums wrap identically in any order, so
the value does not depend on the mesh or the device count, and changing any single bit of a
leaf changes both sums (every weight is odd). Restoring recomputes it; a mismatch, or a
checkpoint orbax cannot read, is a CorruptCheckpointError and the loop falls back to an older
step that restores (the failed newer ones are moved aside); if none restores, nothing is moved.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.run import compile_ahead

CORRUPT_DIR = 'corrupt'  # <checkpoints>/../corrupt/<step>-<time>: steps that failed verification


class CorruptCheckpointError(JaxlabError):
  """A checkpoint that cannot be read back, or whose content differs from what was saved."""


class CheckpointMismatchError(ConfigError):
  """A checkpoint whose arrays have other shapes than the state it should be restored into: every step of the
  run shares this (the model or what sizes it, such as a vocabulary, changed), so it is no damage."""


class CheckpointSaveError(JaxlabError):
  """An (asynchronous) save failed, e.g. the disk is full."""


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """Shape/dtype/sharding leaves: the target restore lays the saved arrays out onto."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as a flat uint32 vector (8/16-bit values widened, 64-bit ones split in two)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = x.dtype.itemsize * 8
  if width == 64:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  bits = _as_uint32(x)
  i = jnp.arange(bits.size, dtype=jnp.uint32)
  linear = jnp.sum(bits * (2 * i + 1), dtype=jnp.uint32)
  # A second, mixed weighting: swapped or shifted values that fool the linear one do not fool both.
  mixed = (i ^ (i >> 7)) * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
  return jnp.stack([linear, jnp.sum(bits * mixed, dtype=jnp.uint32)])


@jax.jit
def _checksums(tree: Any) -> list[jax.Array]:
  return [_leaf_checksum(x) for x in jax.tree.leaves(tree)]


def compile_checksums(tree: Any) -> None:
  """Compiles `checksum`'s program for trees of `tree`'s abstract leaves (see jaxlab.run.compile_ahead)."""
  compile_ahead.compile_for(_checksums, tree)


def checksum(tree: Any) -> list[list[int]]:
  """[[linear, mixed], ...] per leaf of `tree`, as plain ints (JSON)."""
  return [[int(v) for v in pair] for pair in jax.device_get(_checksums(tree))]


def _shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path of names: shape} of every array leaf, the path alike for a TrainState and orbax's metadata of it."""
  name = lambda key: str(getattr(key, 'name', getattr(key, 'key', getattr(key, 'idx', key))))
  return {tuple(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if hasattr(leaf, 'shape')}


def _first_line(error: BaseException) -> str:
  """The error's first line; a long one keeps its start and its end, where orbax puts the OS cause.

  tensorstore's annotations after the cause (`[os_error_code='27'] [tensorstore_spec='{...}']`) are
  dropped first: they could push the cause ('File too large') out of the kept end.
  """
  text = str(error).strip().splitlines()[0] if str(error).strip() else ''
  text = re.sub(r"\s*\[[a-z_ ]+='[^']*'\]", '', text)
  if len(text) > 300:
    text = f'{text[:140]} ... {text[-140:]}'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


class Checkpointer:
  """Keeps the newest `keep` checkpoints; an unfinished (killed) save is never restored.

  A checkpoint holds `state`, `config` and `meta` (the checksum plus any caller's values, e.g.
  early stopping's metric value), so what is restored and what describes it are one save.
  """

  def __init__(self, directory: str, keep: int, warn: Callable[[str], None] | None = None):
    self.directory = directory if '://' in directory else os.path.abspath(directory)  # orbax writes gs:// itself
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._warn = warn or (lambda text: print(f'warning: {text}', file=sys.stderr, flush=True))
    self._pending: int | None = None  # a save started but not yet known to be on disk
    self.last_good: int | None = self._manager.latest_step()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Starts writing `state` at `step` (asynchronously); returns the meta saved with it (checksum and
    `extra`, which `read_meta` gives back later)."""
    self.wait()  # orbax would wait for the previous save here anyway; settle whether it succeeded
    meta = {'checksum': checksum(state), **extra}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
                              meta=ocp.args.JsonSave(meta))
    try:
      self._manager.save(step, args=args, force=True)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for one failed write
      raise self._save_error(step, e) from None
    self._pending = step
    return meta

  def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
    last = f'step {self.last_good} in {self.directory}' if self.last_good is not None else 'none'
    return CheckpointSaveError(f'saving the checkpoint of step {step} failed ({_first_line(error)}); '
                               f'last good checkpoint: {last}')

  def check(self) -> None:
    """Raises CheckpointSaveError as soon as a background save has ended in failure; cheap otherwise."""
    if self._pending is not None and not self._manager.is_saving_in_progress():
      self.wait()  # ended: returns at once, or raises the save's error (orbax reports it nowhere else)

  def wait(self) -> None:
    """Blocks until the pending save is on disk (or raises CheckpointSaveError)."""
    if self._pending is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax re-raises whatever its writer threads hit
      step, self._pending = self._pending, None
      raise self._save_error(step, e) from None
    self.last_good, self._pending = self._pending, None

  def read_meta(self, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, meta) saved at `step`; CorruptCheckpointError if they cannot be read."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                                     meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      raise CorruptCheckpointError(f'checkpoint {step}: {_first_line(e)}') from None
    return dict(restored.config), dict(restored.meta)

  def restore(self, step: int, target: Any, meta: dict[str, Any]) -> Any:
    """The state saved at `step`, laid out like `target`, verified against `meta['checksum']`."""
    mismatch = self.shape_mismatch(step, target)
    if mismatch:
      raise CheckpointMismatchError(f'checkpoint {step} in {self.directory} does not fit the model: {mismatch}')
    try:
      state = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    except Exception as e:  # noqa: BLE001 - a truncated or missing data file fails deep inside tensorstore
      raise CorruptCheckpointError(f'checkpoint {step}: {_first_line(e)}') from None
    if checksum(state) != meta.get('checksum'):
      raise CorruptCheckpointError(f'checkpoint {step}: its content differs from what was saved (checksum mismatch)')
    return state

  def shape_mismatch(self, step: int, target: Any) -> str | None:
    """The first array whose saved shape differs from `target`'s, as '<path> is ... saved, ... now'; None if all
    agree or the checkpoint's metadata cannot be read (restoring then says what is wrong)."""
    try:
      saved = _shapes(ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory) / str(step) / 'state'))
    except Exception:  # noqa: BLE001 - damaged metadata: the restore's own error names the damage
      return None
    for path, shape in _shapes(target).items():
      if path in saved and saved[path] != shape:
        return f'{"/".join(path)} has shape {saved[path]} saved, {shape} now'
    return None

  def move_aside(self, step: int) -> str:
    """Moves a bad step out of orbax's sight to <workdir>/corrupt/<step>-<time>; returns where."""
    aside = epath.Path(self.directory).parent / CORRUPT_DIR / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    if jax.process_index() == 0:
      aside.parent.mkdir(parents=True, exist_ok=True)
      (epath.Path(self.directory) / str(step)).rename(aside)
    from jaxlab import parallel
    parallel.barrier(f'jaxlab_move_aside_{step}')
    self._manager.reload()
    return str(aside)

  def restore_newest_good(self, target: Any, accept: Callable[[int, dict[str, Any]], None],
                          move_aside: bool = True) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that reads back intact; None if there is none.

    `accept(step, config)` sees each candidate's saved config first and may raise (a run with
    another config must not be resumed). Steps newer than the one restored failed to restore: a
    warning names each, and they are moved aside (`move_aside`: a run resuming; a reader leaves them).
    If none restores, nothing is moved (a failure every step shares, such as a state of another
    structure or a full device, is no proof of damage) and CorruptCheckpointError says so.
    """
    steps, failed = sorted(self.all_steps(), reverse=True), []
    unreadable = self._unreadable_shards(steps) if jax.process_count() > 1 and steps else {}
    for step in steps:
      try:
        if unreadable.get(step):
          raise CorruptCheckpointError(f'checkpoint {step}: the shard of process(es) '
                                       f'{", ".join(map(str, unreadable[step]))} does not read back')
        config, meta = self.read_meta(step)
        accept(step, config)
        state = self.restore(step, target, meta)
      except CorruptCheckpointError as e:
        failed.append(e)
        continue
      for newer, error in zip(steps, failed):
        done = f'moved it aside to {self.move_aside(newer)}; resuming from' if move_aside else 'left it; reading'
        self._warn(f'{error}; {done} step {step}, the newest that restores')
      self.last_good = step
      return step, state, meta
    if steps:
      raise CorruptCheckpointError(
          f'none of the {len(steps)} checkpoint(s) in {self.directory} restores (newest: {failed[0]}); nothing was '
          'moved')
    return None

  def _unreadable_shards(self, steps: list[int]) -> dict[int, list[int]]:
    """{step: the processes whose part of it does not read back}, the same on every process.

    orbax's multi-process restore ends at a barrier: a process whose read failed never reaches it and
    the others wait there for good. So before any restore, each process reads its own shard of every
    step (and process 0 lists the merged index), and they all-gather what they found."""
    from jax.experimental import multihost_utils
    problems = [self._shard_problem(step) for step in steps]
    for step, problem in zip(steps, problems):
      if problem:
        self._warn(f'process {jax.process_index()}: its shard of checkpoint {step} does not read back ({problem})')
    readable = multihost_utils.process_allgather(np.array([p is None for p in problems], np.int32))
    return {step: [int(i) for i in np.flatnonzero(readable[:, j] == 0)] for j, step in enumerate(steps)}

  def _shard_problem(self, step: int) -> str | None:
    """Why this process's OCDBT shard of `step` does not read back (every value read), else None."""
    import tensorstore as ts
    state = epath.Path(self.directory) / str(step) / 'state'
    parts = [(state / f'ocdbt.process_{jax.process_index()}', True)] + ([(state, False)] if jax.process_index() == 0
                                                                         else [])
    try:
      for path, read_values in parts:
        if not path.exists():
          continue  # saved by fewer processes: this one has no shard of its own to read
        url = str(path) if '://' in str(path) else f'file://{path}'
        store = ts.KvStore.open({'driver': 'ocdbt', 'base': f'{url}/'}).result()
        keys = store.list().result()
        if read_values:
          for read in [store.read(key) for key in keys]:
            read.result()
    except Exception as e:  # noqa: BLE001 - tensorstore reports damage as ValueError, OSError and more
      return _first_line(e)
    return None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()
