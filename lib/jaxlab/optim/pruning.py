"""Magnitude pruning (Han et al. 2015) as the last optax transformation of the optimizer.

`prune.sparsity` gives per-layer targets as (regex, fraction) pairs over parameter paths
('Dense_0/kernel'; the first matching rule counts, unmatched parameters stay dense). At each step
of `prune.steps` (an iterative schedule: prune, retrain, prune ...) the smallest-magnitude weights
of each matched parameter are pruned, up to target * r(i) at the i-th of n events, r(i) = (i + 1) / n
(`prune.ramp='linear'`) or 1 - (1 - (i + 1) / n)^3 (`'cubic'`, Zhu & Gupta 2017: most pruned early, while
many weights are left to take over, little at the end). The
masks live in the optimizer state (so in the TrainState and its checkpoints), and every update
is u * mask - w * (1 - mask): kept weights get their update exactly, pruned ones become and stay 0.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.optim.paths import parameter_paths

RAMPS = ('linear', 'cubic')


def ramp(kind: str, i: int, n: int) -> float:
  """The fraction of its target a layer is pruned to at the i-th of n events."""
  done = (i + 1) / n
  return done if kind == 'linear' else 1 - (1 - done) ** 3


class PruneState(NamedTuple):
  count: jax.Array  # updates applied so far: the step
  masks: Any  # like params: 1 kept, 0 pruned (all ones for an unpruned parameter)


def _rules(sparsity: Any) -> list[tuple[re.Pattern, float]]:
  rules = []
  for rule in sparsity:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
            and isinstance(rule[1], (int, float)) and 0 <= rule[1] < 1):
      raise ConfigError(f'prune.sparsity rule {rule!r} is not a (regex, fraction in [0, 1)) pair')
    try:
      rules.append((re.compile(rule[0]), float(rule[1])))
    except re.error as e:
      raise ConfigError(f'prune.sparsity regex {rule[0]!r} is not a regular expression: {e}') from None
  return rules


def targets(params: Any, sparsity: Any) -> Any:
  """The tree of params' target sparsities (0: not pruned); every rule must match some parameter."""
  rules, used = _rules(sparsity), set()
  paths = parameter_paths(params)

  def target(path: str) -> float:
    for i, (pattern, fraction) in enumerate(rules):
      if pattern.search(path):
        used.add(i)
        return fraction
    return 0.0

  found = [target(p) for p in paths]
  for i, (pattern, _) in enumerate(rules):
    config_lib.require(i in used, f'prune.sparsity regex {pattern.pattern!r} matches no parameter; the parameters '
                                  f'are {", ".join(paths)}')
  return jax.tree.unflatten(jax.tree.structure(params), found)


def magnitude_mask(weights: jax.Array, fraction: float) -> jax.Array:
  """1 for all but the round(fraction * size) smallest |weights| (ties broken by position), 0 for those."""
  k = int(round(fraction * weights.size))
  if k == 0:
    return jnp.ones_like(weights)
  ranks = jnp.argsort(jnp.argsort(jnp.abs(weights).reshape(-1), stable=True), stable=True)
  return (ranks >= k).astype(weights.dtype).reshape(weights.shape)


def prune_by_magnitude(sparsity: Any, steps: tuple[int, ...], kind: str = 'linear') -> optax.GradientTransformation:
  """Prunes at `steps` to the per-layer `sparsity`, ramped over the events; keeps pruned weights at 0."""
  if kind not in RAMPS:
    raise ConfigError(f"prune.ramp must be one of {', '.join(RAMPS)}, got {kind!r}")
  steps = tuple(sorted(steps))

  def init(params: Any) -> PruneState:
    targets(params, sparsity)  # checks every rule at build time
    return PruneState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.ones_like, params))

  def update(updates: Any, state: PruneState, params: Any = None) -> tuple[Any, PruneState]:
    if params is None:
      raise ValueError('pruning needs the parameters: call update(updates, state, params)')
    goals = targets(params, sparsity)

    def event(i: int) -> Any:
      reached = ramp(kind, i, len(steps))
      return jax.tree.map(lambda w, m, f: magnitude_mask(w * m, f * reached) * m, params, state.masks, goals)

    masks = state.masks
    for i, step in enumerate(steps):  # a handful of events: one cond each
      masks = jax.lax.cond(state.count == step, lambda i=i: event(i), lambda: masks)
    new = jax.tree.map(lambda u, w, m: u * m - w * (1 - m), updates, params, masks)
    return new, PruneState(state.count + 1, masks)

  return optax.GradientTransformation(init, update)


def validate(prune: ml_collections.ConfigDict, num_steps: int) -> None:
  _rules(prune.sparsity)
  config_lib.require(not prune.sparsity or bool(prune.steps), 'prune.sparsity needs prune.steps, the steps to '
                                                              'prune at (e.g. (0,) to prune a loaded model at once)')
  config_lib.require(all(0 <= s < num_steps for s in prune.steps),
                     f'prune.steps must lie in [0, train.num_steps {num_steps}), got {tuple(prune.steps)}')
  config_lib.require(len(set(prune.steps)) == len(prune.steps), f'prune.steps repeats a step: {tuple(prune.steps)}')


def nonzeros(params: Any) -> dict[str, list[int]]:
  """{path: [nonzero, total]} for every parameter (all replicas together)."""
  counts = jax.device_get(jax.jit(lambda p: [jnp.count_nonzero(x) for x in jax.tree.leaves(p)])(params))
  sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params)]
  return {path: [int(c), n] for path, c, n in zip(parameter_paths(params), counts, sizes)}


def format_nonzeros(table: dict[str, list[int]]) -> str:
  lines = ['| parameter | nonzero | total | kept |', '|---|---|---|---|']
  lines += [f'| {path} | {c:,} | {n:,} | {c / n:.1%} |' for path, (c, n) in table.items()]
  kept, total = sum(c for c, _ in table.values()), sum(n for _, n in table.values())
  lines.append(f'| all | {kept:,} | {total:,} | {kept / total:.1%} ({total / max(kept, 1):.1f}x fewer) |')
  return '\n'.join(lines)
