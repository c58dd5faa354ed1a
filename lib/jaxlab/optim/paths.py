"""Parameters named by their paths in the tree ('Dense_0/kernel'), as configs match them with regular expressions."""

from __future__ import annotations

from typing import Any

import jax


def parameter_paths(params: Any) -> list[str]:
  """'Dense_0/kernel', ...: every parameter's '/'-joined path, in the tree's order."""
  return jax.tree.leaves(paths_tree(params))


def paths_tree(params: Any) -> Any:
  """`params` with each leaf replaced by its path."""
  return jax.tree_util.tree_map_with_path(lambda path, _: '/'.join(str(getattr(k, 'key', k)) for k in path), params)
