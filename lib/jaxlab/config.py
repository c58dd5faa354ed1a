"""Loading, checking and comparing run configs (ml_collections ConfigDicts)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import Any, Mapping, Sequence, TypeVar

import ml_collections
from etils import epath

from jaxlab.errors import ConfigError

CONFIG_FILE = 'config.json'
# Keys that do not change what a run computes, so a run may resume with other values: how it is
# laid out on devices (another mesh), what evaluation measures besides the task's own metrics
# (attacks), and where else its numbers are reported (trackers).
UNCOMPARED_KEYS = ('mesh', 'sharding_rules', 'eval', 'logging', 'sample')
# The one key that may grow on resume (to train longer), where nothing spreads over it (spread_over_num_steps).
NUM_STEPS = 'train.num_steps'


def call(spec: str, function: str) -> Any:
  """`function(arg)` of the config file `path/to/config.py[:arg]` (`function()` without an arg)."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config file not found: {path}')
  module_spec = importlib.util.spec_from_file_location('_jaxlab_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise ConfigError(f'{path} has no {function}() function')
  return getattr(module, function)(arg) if arg else getattr(module, function)()


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` and applies `a.b=value` overrides; returns a locked config."""
  config = call(spec, 'get_config')
  config.lock()
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str], what: str = 'override') -> None:
  """Sets each 'a.b=value' of `overrides` (`what` names them in the error for one without '=')."""
  for override in overrides:
    key, sep, value = override.partition('=')
    if not sep:
      raise ConfigError(f'{what} {override!r} is not of the form key=value')
    set_value(config, key, value)


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets dotted `key` to `value` (a string is parsed as the existing field's type)."""
  *parents, leaf = key.split('.')
  node = config
  for i, name in enumerate(parents):
    if name not in node:
      raise ConfigError(f'unknown config key {".".join(parents[:i + 1])!r}')
    node = node[name]
  if leaf not in node:
    raise ConfigError(f'unknown config key {key!r}; known keys here: {", ".join(sorted(node.keys()))}')
  old = node[leaf]
  if isinstance(value, str) and not isinstance(old, str):
    value = _parse_literal(key, value, old)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f'config key {key!r}: {e}') from None


def _parse_literal(key: str, text: str, old: Any) -> Any:
  import ast
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ConfigError(f'config key {key!r}: cannot parse {text!r} as {type(old).__name__}') from None
  if isinstance(old, float) and isinstance(value, int):
    value = float(value)
  return value


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists)."""
  return json.loads(config.to_json())


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Dotted keys whose values differ between two config dicts (missing counts as differing)."""
  a, b = flatten(old), flatten(new)
  return sorted(k for k in a.keys() | b.keys() if a.get(k, '<absent>') != b.get(k, '<absent>'))


def check_same(saved: dict[str, Any], config: ml_collections.ConfigDict, what: str,
               hint: str = 'Use another --workdir, or pass --restart to move the old run aside and start over.') -> None:
  """A ConfigError listing the keys (old -> new) where `config` differs from the `saved` one.

  UNCOMPARED_KEYS may differ: a checkpoint restores onto any mesh, trackers may be switched on later, and the
  samples shown at evaluation (`sample`) train nothing.
  """
  # A key the saved run predates took its default then (new keys default to the old behaviour).
  default_values = flatten(to_dict(defaults()))
  saved_flat, new_flat = flatten(saved), flatten(to_dict(config))
  keys = [k for k in differing_keys(saved, to_dict(config)) if k.split('.')[0] not in UNCOMPARED_KEYS
          and not (k not in saved_flat and _predates(saved_flat, k) and k in default_values
                   and new_flat.get(k) == default_values[k])]
  if keys == [NUM_STEPS]:
    _check_longer(saved_flat.get(NUM_STEPS), config, what, hint)
    return
  if not keys:
    return
  shown = ', '.join(f'{k} ({saved_flat.get(k, "<absent>")!r} -> {new_flat.get(k, "<absent>")!r})' for k in keys[:8])
  more = f' and {len(keys) - 8} more' if len(keys) > 8 else ''
  raise ConfigError(f'{what}: {shown}{more}. {hint}')


def _check_longer(saved_steps: Any, config: ml_collections.ConfigDict, what: str, hint: str) -> None:
  """A run may go on to more steps only where that changes nothing it has done: nothing spreads over
  train.num_steps, so its first steps are those of a run started with the larger number."""
  steps = config.train.num_steps
  if not isinstance(saved_steps, int) or steps < saved_steps:
    raise ConfigError(f'{what}: {NUM_STEPS} ({saved_steps!r} -> {steps!r}); a run can be continued to more '
                      f'steps, not fewer. {hint}')
  spread = spread_over_num_steps(config)
  if spread:
    raise ConfigError(f'{what}: {NUM_STEPS} ({saved_steps} -> {steps}), and {", ".join(spread)} spreads over '
                      f'{NUM_STEPS}, so the steps done would not be those of a {steps}-step run. {hint}')


def spread_over_num_steps(config: ml_collections.ConfigDict) -> list[str]:
  """What `config` lays out over train.num_steps: every learning-rate schedule but 'constant' (of any block,
  `optimizer` or a GAN's `discriminator_optimizer`), and DQN's exploration.

  This knowledge of optim's schedules and of the DQN task sits here, not with them, because a sweep's parent
  checks its points without importing JAX (tests/test_sweep.py), and optim and tasks import it.
  """
  spread = sorted(f'{name}.schedule {block.schedule!r}' for name, block in config.items()
                  if isinstance(block, ml_collections.ConfigDict) and block.get('schedule', 'constant') != 'constant')
  if 'dqn' in config:
    spread.append("dqn's exploration")
  return spread


def _predates(saved_flat: dict[str, Any], key: str) -> bool:
  """True if no saved key lies under or above `key`: the key is missing, not replaced by a block or a value."""
  return not any(k.startswith(key + '.') or key.startswith(k + '.') for k in saved_flat)


def read_run(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir`, with the default of every key it predates filled in."""
  saved = read_saved(workdir)
  if saved is None:
    raise ConfigError(f'{workdir} holds no run (no readable {CONFIG_FILE})')
  config = ml_collections.ConfigDict(saved)
  default = defaults()
  for key in ('model', 'data'):  # a family's own blocks: only the keys every data block has
    del default[key]
  _fill_missing(config, default)
  for key in ('folds', 'fold'):
    if 'data' in config and key not in config.data:
      config.data[key] = 0
  return config


def _fill_missing(config: ml_collections.ConfigDict, default: ml_collections.ConfigDict) -> None:
  for key, value in default.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
      _fill_missing(config[key], value)


def read_saved(workdir: str) -> dict[str, Any] | None:
  """The workdir's config.json, or None when there is none or it is unreadable (a warning says so)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    print(f'warning: ignoring the unreadable {path} ({type(e).__name__}); the checkpoint\'s own config is '
          'compared instead', file=sys.stderr, flush=True)
    return None
  return saved if isinstance(saved, dict) else None


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json atomically: a crash leaves the old file or the new one, never a truncated one."""
  path = epath.Path(workdir) / CONFIG_FILE
  partial = path.with_name(CONFIG_FILE + '.tmp')
  partial.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True))
  partial.replace(path)


def require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


T = TypeVar('T')


def resolve(key: str, name: str, builtin: Mapping[str, T]) -> T:
  """builtin[name], or the attribute `Name` of `package.module` for `name='package.module:Name'`.

  A researcher's own model or task lives in their package or in experiments/<paper>/ (the
  project's root is on sys.path when launch.py runs) and needs no edit of jaxlab.
  """
  if ':' not in name:
    if name not in builtin:
      raise ConfigError(f'unknown {key} {name!r}; choose from {", ".join(sorted(builtin))} '
                        "or give 'package.module:Name'")
    return builtin[name]
  module_name, _, attribute = name.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(f'{key} {name!r}: cannot import {module_name} ({e})') from None
  if not hasattr(module, attribute):
    raise ConfigError(f'{key} {name!r}: module {module_name} has no {attribute!r}')
  return getattr(module, attribute)


def defaults() -> ml_collections.ConfigDict:
  """Every key a run reads, set to the default job: the MNIST-1D CNN with the paper's protocol.

  Config files start from this and change what differs; a family with other model or data
  keys replaces the whole `model` or `data` block.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_replicas = 1  # >1: seeds seed, seed+1, ... trained together by one jitted step (replicas.py)
  c.replica_group = 0  # replicas vmapped together, the groups one after another; 0: all (replicas.py)
  c.task = 'classification'
  c.data = ml_collections.ConfigDict(dict(
      name='mnist1d', num_samples=5000, train_split=0.8,  # mnist1d's defaults: 4000 train / 1000 test
      validation_size=0, batch_size=100, eval_batch_size=500,
      folds=0, fold=0))  # k-fold cross-validation: fold `fold` of `folds` is the validation split (data/folds.py)
  c.model = ml_collections.ConfigDict(dict(name='cnn1d', channels=25, conv='xla'))
  # l1/l2: penalties on the kernels whose path ('layer_0/kernel') the regex penalty_paths matches ('': all).
  # adversarial: '' (off), 'fgsm' or 'pgd' examples of L-infinity radius adversarial_eps (pixel units)
  # made inside the training step (attacks.training_attack); the loss is (1 - w) * clean + w * adversarial,
  # w = adversarial_weight (0: the method's own, 0.5 for fgsm, 1 for pgd). adversarial_step_size 0: 2.5 eps / steps.
  c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0, l1=0.0, l2=0.0, penalty_paths='', adversarial='',
                                          adversarial_eps=0.3, adversarial_steps=40, adversarial_step_size=0.0,
                                          adversarial_weight=0.0))
  # Parameter paths are '/'-joined module names inside `params`, e.g. 'Dense_2/kernel' (init.py).
  # frozen: a regex (re.search) of parameters that get no updates; linear_probe: all but the output layer 'head'.
  # prune: magnitude pruning (pruning.py) to per-layer sparsities ((regex, fraction), ...) at the given steps,
  # ramped 'linear'ly or 'cubic' (Zhu & Gupta) over them.
  # max_norm > 0: each unit's incoming kernel weights are kept to at most that L2 norm (max_norm.py).
  c.optimizer = ml_collections.ConfigDict(dict(
      frozen='', linear_probe=False, prune=ml_collections.ConfigDict(dict(sparsity=(), steps=(), ramp='linear')),
      name='adam', learning_rate=1e-2, schedule='constant', warmup_steps=0, final_lr_fraction=0.0,
      step_boundaries=(0.5, 0.75), step_factor=0.1, weight_decay=0.0, decay_matrices_only=False, grad_clip_norm=0.0,
      max_norm=0.0,
      momentum=0.9, b1=0.9, b2=0.999, eps=1e-8,
      decay=0.9, rmsprop_momentum=0.0))  # rmsprop's own: optax's and torch's default is no momentum
  # Parameters from another run (init.py), used where this run has no checkpoint of its own:
  # workdir's newest checkpoint ('best': its early-stopping best; step > 0: that step). map: (regex,
  # replacement) rules from source parameter paths to this run's; skip: a regex of this run's
  # parameters left freshly initialised (a head whose class count changed).
  c.init = ml_collections.ConfigDict(dict(workdir='', checkpoint='newest', step=0, map=(), skip=''))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=6000, log_every=200, eval_every=1000, checkpoint_every=1000, keep_checkpoints=3,
      device_prefetch=2,  # batches copied onto accelerators ahead of the step (0: copy when the step runs)
      # e.g. 'validation_accuracy' (needs data.validation_size); '' is off. Patience counts
      # evaluations without improvement before stopping (0: never stop, still keep the best).
      early_stopping_metric='', early_stopping_mode='max', early_stopping_patience=0,
      grad_accum_steps=1,  # k > 1: each step sums the gradients of k micro-batches (accumulate.py)
      # n > 1: up to n steps per call of the compiled program (one dispatch; a call ends at every log,
      # evaluation and checkpoint step). For steps of a few ms, whose dispatch costs as much (RL on CPU).
      steps_per_call=1,
      peak_flops=0.0))  # per device, for MFU; 0: from the table of chips in flops.py
  # Devices as a (data, fsdp, tensor) grid; -1: all remaining. The batch is split over data x fsdp.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical parameter dimension -> mesh axis (or None, or a tuple of axes); first match wins (sharding.py).
  c.sharding_rules = (
      ('embed', 'fsdp'),      # the model width, in every matrix: ZeRO-3 style parameter sharding
      ('heads', 'tensor'),    # attention heads: Megatron column-parallel q, k, v and row-parallel output
      ('mlp', 'tensor'),      # the MLP hidden dimension: column- then row-parallel
      ('conv_out', 'fsdp'),   # a convolution's output channels
      ('kv', None), ('vocab', None), ('position', None), ('classes', None), ('conv_in', None))
  # Robust accuracy at each evaluation (attacks.py; classification): every method at every epsilon
  # (pixel units for image data). pgd_step_size 0: 2.5 * eps / pgd_steps (Madry et al.).
  c.eval = ml_collections.ConfigDict(dict(attack_eps=(), attacks=('fgsm', 'pgd'), pgd_steps=20, pgd_step_size=0.0,
                                          pgd_restarts=1))
  # Trackers beside TensorBoard (trackers.py). wandb.mode: '' leaves it to wandb (WANDB_MODE, else
  # online); 'offline' needs no network (`wandb sync` later). mlflow.tracking_uri: '' leaves it to
  # MLflow (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder).
  c.logging = ml_collections.ConfigDict(dict(
      wandb=ml_collections.ConfigDict(dict(enabled=False, project='jaxlab', entity='', name='', tags=(), mode='')),
      mlflow=ml_collections.ConfigDict(dict(enabled=False, tracking_uri='', experiment='jaxlab', run_name='',
                                            artifact_location=''))))
  return c
