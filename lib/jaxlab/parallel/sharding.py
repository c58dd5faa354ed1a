"""Parameter sharding from logical axis names (the t5x / MaxText way).

A model names the dimensions of its parameters (`embed`, `heads`, `mlp`, `vocab`, ...) with
`nn.with_logical_partitioning`; `config.sharding_rules` (defaults in config.py) maps each name to
a mesh axis (or None, or a tuple of axes). The optimizer state follows its parameters; everything else (step, RNG,
BatchNorm statistics, optimizer counters) is replicated. With the default rules, `fsdp` shards
every matrix along its `embed` dimension (ZeRO-3) and `tensor` splits attention heads and the MLP
hidden dimension (Megatron).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlab.errors import ConfigError


def param_axes(model: nn.Module, inputs: jax.Array) -> Any:
  """The model's parameters as a tree of logical PartitionSpecs (P() where a parameter names none)."""
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(functools.partial(model.init, train=False), {'params': key, 'dropout': key}, inputs)
  return nn.get_partition_spec(variables)['params']


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """`config.sharding_rules` as flax wants them; ConfigError for an entry that is not (name, axes)."""
  out = []
  for rule in rules:
    axes = rule[1] if isinstance(rule, (list, tuple)) and len(rule) == 2 else None
    axes = tuple(axes) if isinstance(axes, list) else axes
    if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str) and (
        axes is None or isinstance(axes, str) or all(isinstance(a, str) for a in axes))):
      raise ConfigError(f'sharding_rules entry {rule!r} is not (logical name, mesh axis | None | (axes, ...))')
    out.append((rule[0], axes))
  return tuple(out)


def _path(path: Sequence[Any]) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def mesh_spec(name: str, shape: Sequence[int], logical: P, mesh_shape: Mapping[str, int],
              rules: Sequence[tuple[str, Any]]) -> P:
  """The mesh PartitionSpec of one parameter; ConfigError for an unknown axis or an indivisible dimension."""
  if len(logical) not in (0, len(shape)):
    raise ConfigError(f'parameter {name} of shape {tuple(shape)} names {len(logical)} axes {tuple(logical)}')
  if not logical:
    return P()
  axes = nn.logical_to_mesh_axes(tuple(logical), rules)
  for dim, (size, assigned, logical_name) in enumerate(zip(shape, axes, logical)):
    names = () if assigned is None else (assigned,) if isinstance(assigned, str) else tuple(assigned)
    unknown = [a for a in names if a not in mesh_shape]
    if unknown:
      raise ConfigError(f'sharding_rules map {logical_name!r} to mesh axis {unknown[0]!r}, which is not one of '
                        f'{list(mesh_shape)} (parameter {name}, shape {tuple(shape)})')
    ways = math.prod(mesh_shape[a] for a in names)
    if size % ways:
      raise ConfigError(f'parameter {name} of shape {tuple(shape)}: dimension {dim} ({logical_name!r}, {size}) is '
                        f'not divisible by the {ways} devices of mesh axis {"x".join(names)}; change the mesh or '
                        'sharding_rules')
  return P(*axes)


def param_specs(abstract_params: Any, logical: Any, mesh_shape: Mapping[str, int],
                rules: Sequence[tuple[str, Any]]) -> Any:
  """Mesh PartitionSpecs for a tree of parameters from their logical specs."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_params)
  specs = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
  out = [mesh_spec(_path(path), leaf.shape, spec, mesh_shape, rules) for (path, leaf), spec in zip(leaves, specs)]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), out)


def _follow_params(tree: Any, abstract_params: Any, specs: Any) -> Any:
  """Specs for `tree`: every subtree shaped like the parameters (Adam's moments...) gets theirs, the rest P()."""
  treedef = jax.tree.structure(abstract_params)
  shapes = [x.shape for x in jax.tree.leaves(abstract_params)]

  def like_params(x: Any) -> bool:
    return jax.tree.structure(x) == treedef and [y.shape for y in jax.tree.leaves(x)] == shapes

  return jax.tree.map(lambda x: specs if like_params(x) else P(), tree, is_leaf=like_params)


def state_specs(abstract_state: Any, logical: Any | None, mesh_shape: Mapping[str, int],
                rules: Sequence[tuple[str, Any]]) -> Any:
  """PartitionSpecs for a TrainState: params from their logical axes, the optimizer state following them."""
  if logical is None:  # a task that names no axes: everything replicated
    return jax.tree.map(lambda _: P(), abstract_state)
  specs = param_specs(abstract_state.params, logical, mesh_shape, rules)
  for name, axes in rules:  # the rules no parameter used: still no unknown axes
    for axis in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
      if axis not in mesh_shape:
        raise ConfigError(f'sharding_rules map {name!r} to mesh axis {axis!r}, which is not one of {list(mesh_shape)}')
  return abstract_state.replace(
      params=specs, opt_state=_follow_params(abstract_state.opt_state, abstract_state.params, specs),
      **{k: jax.tree.map(lambda _: P(), getattr(abstract_state, k)) for k in ('step', 'model_state', 'rng')})


def with_leading_axis(specs: Any) -> Any:
  """The specs of arrays stacked along a new, unsharded first axis (vmapped replicas)."""
  return jax.tree.map(lambda s: P(None, *s), specs, is_leaf=lambda x: isinstance(x, P))


def named(specs: Any, mesh: Mesh) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def bytes_per_device(abstract: Any, shardings: Any) -> int:
  """Bytes the largest-loaded device holds of `abstract` laid out by `shardings`."""
  totals: dict[Any, int] = {}
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    for device, index in sharding.devices_indices_map(leaf.shape).items():
      shard = [len(range(*s.indices(n))) for s, n in zip(index, leaf.shape)]
      totals[device] = totals.get(device, 0) + int(np.prod(shard)) * leaf.dtype.itemsize
  return max(totals.values(), default=0)


def total_bytes(abstract: Any) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
