"""The `init` block: a new run's parameters and model state from another run's checkpoint.

It applies only where the run has no checkpoint of its own (its own resume wins). Paths are the
'/'-joined module names inside a collection: 'Dense_0/kernel' in `params`, 'BatchNorm_0/mean' in
`batch_stats`. Each source path is renamed by the first `init.map` rule (regex, replacement) that
matches it (re.search, then re.sub once); the others keep their names. Every array of this run's
collections that the source has too (a distillation student's 'teacher' collection is its own) and
that `init.skip` does not match must then find a source of its shape; source arrays nothing asks
for are left out (an encoder loaded from an autoencoder). Bad input is a ConfigError naming the
rule, the array or the path.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.optim.paths import parameter_paths
from jaxlab.tasks.state import TrainState

CHECKPOINTS = ('newest', 'best')  # program.CHECKPOINT_DIRS' keys; program imports this module


def validate(init: ml_collections.ConfigDict) -> None:
  """One-line errors for the `init` block's own settings, before anything is built."""
  config_lib.require(init.checkpoint in CHECKPOINTS, f'init.checkpoint must be one of {", ".join(CHECKPOINTS)}, '
                                                     f'got {init.checkpoint!r}')
  config_lib.require(init.step >= 0, f'init.step must be >= 0 (0: the newest), got {init.step}')
  config_lib.require(not (init.step and init.checkpoint == 'best'), 'init.step picks a step of the checkpoints; '
                                                                    "it cannot be combined with init.checkpoint='best'")
  _rules(init.map)
  _compile('init.skip', init.skip)
  config_lib.require(bool(init.workdir) or not (init.map or init.skip or init.step),
                     'init.map, init.skip and init.step need init.workdir, the run to load from')


def _compile(what: str, pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ConfigError(f'{what} {pattern!r} is not a regular expression: {e}') from None


def _rules(rules: Any) -> list[tuple[re.Pattern, str]]:
  compiled = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and all(isinstance(r, str) for r in rule)):
      raise ConfigError(f'init.map rule {rule!r} is not a (regex, replacement) pair of strings')
    compiled.append((_compile('init.map rule', rule[0]), rule[1]))
  return compiled


def _flat(state: TrainState) -> dict[str, Any]:
  """'collection:path' -> array, for params and every model-state collection."""
  collections = {'params': state.params, **state.model_state}
  return {f'{name}:{path}': leaf for name, tree in collections.items()
          for path, leaf in zip(parameter_paths(tree), jax.tree.leaves(tree))}


def _rename(source: dict[str, Any], rules: list[tuple[re.Pattern, str]], workdir: str) -> dict[str, str]:
  """{this run's 'collection:path': the source's} after the init.map rules."""
  renamed, used = {}, [False] * len(rules)
  for key in source:
    collection, path = key.split(':', 1)
    for i, (pattern, replacement) in enumerate(rules):
      if pattern.search(path):
        path, used[i] = pattern.sub(replacement, path, count=1), True
        break
    new = f'{collection}:{path}'
    config_lib.require(new not in renamed, f'init.map renames both {renamed.get(new)} and {key} of {workdir} to {new}')
    renamed[new] = key
  for (pattern, replacement), was_used in zip(rules, used):
    config_lib.require(was_used, f'init.map rule ({pattern.pattern!r}, {replacement!r}) matches no parameter of '
                                 f'{workdir}; its arrays are {", ".join(source)}')
  return renamed


def plan(target: dict[str, Any], source: dict[str, Any], init: ml_collections.ConfigDict) -> dict[str, str]:
  """{target key: source key} for every target array to load; the shapes are checked (per-replica leading axes
  already dropped from both)."""
  renamed = _rename(source, _rules(init.map), init.workdir)
  collections = {key.split(':', 1)[0] for key in source}
  target = {key: leaf for key, leaf in target.items() if key.split(':', 1)[0] in collections}
  skip = _compile('init.skip', init.skip) if init.skip else None
  skipped = [key for key in target if skip and skip.search(key.split(':', 1)[1])]
  config_lib.require(not skip or bool(skipped), f'init.skip {init.skip!r} matches no parameter of this run; its '
                                                f'arrays are {", ".join(target)}')
  chosen = {}
  for key, leaf in target.items():
    if key in skipped:
      continue
    if key not in renamed:
      raise ConfigError(f'init: {key} of this run has no source in {init.workdir} (whose arrays are '
                        f'{", ".join(source)}); map one to it with init.map or leave it fresh with init.skip')
    have = np.shape(source[renamed[key]])
    config_lib.require(have == leaf.shape, f'init: {key} has shape {tuple(leaf.shape)} here but {renamed[key]} of '
                                           f'{init.workdir} has {have}; leave it fresh with init.skip')
    chosen[key] = renamed[key]
  return chosen


def check_not_itself(init: ml_collections.ConfigDict, workdir: str) -> None:
  config_lib.require(init.workdir.rstrip('/') != workdir.rstrip('/'), f'init.workdir is this run\'s own workdir '
                                                                      f'{workdir}; it resumes from its own checkpoints')


def first_replica(config: ml_collections.ConfigDict, tree: Any) -> Any:
  """The arrays of replica 0 of a run of several (`num_replicas` > 1), as numpy; the tree itself otherwise."""
  tree = jax.device_get(tree)
  return jax.tree.map(lambda v: np.asarray(v[0] if config.num_replicas > 1 else v), tree)


def load(config: ml_collections.ConfigDict, state: TrainState, step: int, source_config: ml_collections.ConfigDict,
         source_state: TrainState) -> TrainState:
  """`state` (freshly initialised, laid out for this run) with the arrays `config.init` names loaded into it
  from `source_state`, the checkpoint of `step` of the run `init.workdir` (whose config is `source_config`)."""
  init = config.init
  # A run of several replicas (seeds) gives its first; a run of several takes the same arrays in each.
  source = first_replica(source_config, _flat(source_state))
  target = _flat(state)
  per_replica = config.num_replicas > 1
  shapes = {k: jax.ShapeDtypeStruct(v.shape[1:] if per_replica else v.shape, v.dtype) for k, v in target.items()}
  chosen = plan(shapes, source, init)

  def loaded(key: str, leaf: jax.Array) -> jax.Array:
    if key not in chosen:
      return leaf
    value = source[chosen[key]].astype(leaf.dtype)
    value = np.broadcast_to(value, leaf.shape)
    return jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda index: value[index])

  new = {k: loaded(k, v) for k, v in target.items()}
  fresh = [k for k in target if k not in chosen]
  if jax.process_index() == 0:
    print(f'Initialised {len(chosen)} of {len(target)} arrays from step {step} of {init.workdir} '
          f'({init.checkpoint if not init.step else "step " + str(init.step)}'
          f'{", replica 0" if source_config.num_replicas > 1 else ""})'
          + (f'; fresh: {", ".join(fresh)}' if fresh else ''), flush=True)
  return _unflat(state, new)


def _unflat(state: TrainState, flat: dict[str, Any]) -> TrainState:
  """`state` with its params and model state replaced by the arrays of `flat` (same keys as `_flat(state)`)."""
  def collection(name: str, tree: Any) -> Any:
    paths = parameter_paths(tree)
    return jax.tree.unflatten(jax.tree.structure(tree), [flat[f'{name}:{p}'] for p in paths])
  return state.replace(params=collection('params', state.params),
                       model_state={name: collection(name, tree) for name, tree in state.model_state.items()})
