"""A run's programs compiled on a background thread, ahead of their first call."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any, Callable

import jax
import jax.numpy as jnp

# What a Python int argument (a step count) is to jit.
PYTHON_INT = jax.ShapeDtypeStruct((), jnp.int32, weak_type=True)


def abstract(tree: Any, shardings: Any = None) -> Any:
  """Shape/dtype/sharding/weak-type leaves of arrays or ShapeDtypeStructs: what a jit call keys its cache on.

  `shardings` (a tree like `tree`) replaces the leaves' own shardings. An array jax may still move
  (not committed to its devices) has none: jit places it as it likes.
  """
  def leaf(x: Any, sharding: Any = None) -> jax.ShapeDtypeStruct:
    if sharding is None and getattr(x, 'committed', True):
      sharding = getattr(x, 'sharding', None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=getattr(x, 'weak_type', False))
  return jax.tree.map(leaf, tree) if shardings is None else jax.tree.map(leaf, tree, shardings)


def compile_for(jitted: Any, *args: Any) -> None:
  """Lowers and compiles `jitted` for abstract `args`; jax keeps the result for a call with such arguments."""
  jitted.lower(*args).compile()


class CompileAhead:
  """Runs compile jobs on one background thread, in the order submitted.

  XLA compiles (and persistent-cache reads) release the GIL, so they overlap what the main thread
  does meanwhile: initialising, or training on the other cores. A job only warms jax's caches: a
  call whose arguments differ from the ones compiled compiles itself, as it would without this, and
  an error in a job is left for that call to raise where it belongs.
  """

  def __init__(self) -> None:
    self._pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='jaxlab-compile-ahead')
    self._jobs: dict[str, futures.Future] = {}

  def submit(self, name: str, job: Callable[[], None]) -> None:
    self._jobs[name] = self._pool.submit(_quietly, name, job)

  def wait(self, name: str) -> None:
    """Blocks until job `name` has ended (so its program is not compiled twice); no-op once waited for."""
    job = self._jobs.pop(name, None)
    if job is not None:
      job.result()

  def close(self) -> None:
    """Drops the jobs not started; waits for the running one."""
    self._pool.shutdown(wait=True, cancel_futures=True)


def _quietly(name: str, job: Callable[[], None]) -> None:
  try:
    job()
  except Exception as e:  # noqa: BLE001 - the program's own call raises it again, in the main thread
    logging.getLogger(__name__).debug('compiling %s ahead failed: %s', name, e)
