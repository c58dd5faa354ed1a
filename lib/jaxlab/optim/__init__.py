"""Optimizers and learning-rate schedules from the `optimizer` config block (all optax)."""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import ml_collections
import optax

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.optim import pruning
from jaxlab.optim.max_norm import max_norm
from jaxlab.optim.paths import parameter_paths, paths_tree

SCHEDULES = ('constant', 'cosine', 'linear', 'step')
OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'rmsprop')
HEAD = 'head'  # the output layer's name in every classifier (optimizer.linear_probe trains only it)


def make_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Peak `learning_rate`, linear warm-up for `warmup_steps`, then `schedule` to the end."""
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == 'constant':
    main = optax.constant_schedule(lr)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.final_lr_fraction)
  elif cfg.schedule == 'linear':
    main = optax.linear_schedule(lr, lr * cfg.final_lr_fraction, decay_steps)
  elif cfg.schedule == 'step':
    boundaries = {int(b * num_steps) - warmup: cfg.step_factor for b in cfg.step_boundaries}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ConfigError(f'unknown optimizer.schedule {cfg.schedule!r}; choose from {", ".join(SCHEDULES)}')
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain: clipping, coupled weight decay (decoupled for adamw), the update rule, max-norm."""
  schedule = make_schedule(cfg, num_steps)
  name = cfg.name
  # nanoGPT's rule: decay matrices (kernels, embeddings), not biases or LayerNorm/BatchNorm scales.
  decayed = (lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)) if cfg.decay_matrices_only else None
  if name == 'sgd':
    factory = lambda learning_rate: optax.sgd(learning_rate)
  elif name in ('momentum', 'nesterov'):
    factory = lambda learning_rate: optax.sgd(learning_rate, momentum=cfg.momentum, nesterov=name == 'nesterov')
  elif name == 'adam':
    factory = lambda learning_rate: optax.adam(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif name == 'adamw':
    factory = lambda learning_rate: optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                                weight_decay=cfg.weight_decay, mask=decayed)
  elif name == 'rmsprop':
    factory = lambda learning_rate: optax.rmsprop(learning_rate, decay=cfg.decay, eps=cfg.eps,
                                                  momentum=cfg.rmsprop_momentum or None)
  else:
    raise ConfigError(f'unknown optimizer.name {name!r}; choose from {", ".join(OPTIMIZERS)}')
  # The rate each update used is kept in the optimizer state, where the loop reads it for the logs.
  rule = optax.inject_hyperparams(factory)(learning_rate=schedule)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.weight_decay > 0 and name != 'adamw':
    # Coupled L2 decay, as torch's `weight_decay` argument does for SGD and Adam.
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decayed))
  parts.append(rule)
  if cfg.max_norm:
    parts.append(max_norm(cfg.max_norm))  # inside the freezer's 'trained' branch: frozen weights stay as loaded
  tx = optax.chain(*parts)
  if cfg.frozen or cfg.linear_probe:
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, _freezer(cfg.frozen, cfg.linear_probe))
  if cfg.prune.sparsity:
    pruning.validate(cfg.prune, num_steps)
    ramp = cfg.prune.get('ramp', 'linear')
    tx = optax.chain(tx, pruning.prune_by_magnitude(cfg.prune.sparsity, tuple(cfg.prune.steps), ramp))
  return tx, schedule


def _freezer(frozen: str, linear_probe: bool) -> Callable[[Any], Any]:
  """params -> the same tree of 'frozen' / 'trained' labels (optax.multi_transform)."""
  config_lib.require(not (frozen and linear_probe), 'set optimizer.frozen or optimizer.linear_probe, not both')
  try:
    pattern = re.compile(frozen)
  except re.error as e:
    raise ConfigError(f'optimizer.frozen {frozen!r} is not a regular expression: {e}') from None

  def labels(params: Any) -> Any:
    paths = parameter_paths(params)
    if linear_probe:
      config_lib.require(HEAD in params, f"optimizer.linear_probe needs a model whose output layer is named "
                                         f"'{HEAD}'; this one's parameters are {', '.join(paths)}")
      is_frozen = {path: not path.startswith(HEAD + '/') for path in paths}
    else:
      is_frozen = {path: bool(pattern.search(path)) for path in paths}
      config_lib.require(any(is_frozen.values()), f'optimizer.frozen {frozen!r} matches no parameter; the '
                                                  f'parameters are {", ".join(paths)}')
      config_lib.require(not all(is_frozen.values()), f'optimizer.frozen {frozen!r} matches every parameter: '
                                                      'nothing would train')
    return jax.tree.map(lambda path: 'frozen' if is_frozen[path] else 'trained', paths_tree(params))
  return labels


def learning_rates(opt_state: Any) -> dict[str, Any]:
  """The learning rate each optimizer in `opt_state` applied in its latest update.

  One optimizer gives {'learning_rate': ...}; several (a GAN's dict of states) are named by their dict keys:
  learning_rate_generator, learning_rate_discriminator.
  """
  injected = lambda node: isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
  found = [(path, node) for path, node in jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=injected)[0]
           if injected(node) and 'learning_rate' in node.hyperparams]
  if len(found) == 1:
    return {'learning_rate': found[0][1].hyperparams['learning_rate']}
  name = lambda path: '_'.join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
  return {f'learning_rate_{name(path)}': node.hyperparams['learning_rate'] for path, node in found}
