"""Orbax checkpoints of the TrainState and the run's config, in <workdir>/checkpoints."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """Shape/dtype/sharding leaves: the target restore lays the saved arrays out onto."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


class Checkpointer:
  """Keeps the newest `keep` checkpoints; an unfinished (killed) save is never restored."""

  def __init__(self, directory: str, keep: int):
    self.directory = directory if '://' in directory else os.path.abspath(directory)  # orbax writes gs:// itself
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, config: dict[str, Any]) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target: Any) -> Any:
    """The state saved at `step`, laid out like `target` (see `abstract_with_shardings`)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored.state

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
