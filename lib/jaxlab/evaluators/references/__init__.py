"""Independent plain-JAX references, one per model family, for `launch.py bench --bench_against=reference`.

Each module writes its family's model, loss and optimizer step with jax.numpy and optax alone: it
imports nothing from jaxlab.models or jaxlab.tasks (tests/test_layers.py checks), so a slow layer
or a wasteful loss in jaxlab cannot hide in it. Its `case(config)` converts the initial parameters of
jaxlab's program for `config` into the reference's layout and returns a `Case`; the bench checks
that both compute the same loss from them before timing anything.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterator

import ml_collections

from jaxlab.errors import ConfigError

Batch = dict[str, Any]


@dataclasses.dataclass
class Case:
  """One family's reference, set up for one config."""

  jaxlab_loss: float  # jaxlab's loss on one batch from its initial parameters (no dropout, no sampling noise)
  reference_loss: float  # the reference's loss on the same batch from the same parameters, converted
  init: Callable[[], Any]  # a fresh training carry of the reference (parameters, optimizer state...)
  step: Callable[[Any, Batch], Any]  # its jitted training step, carry -> carry (it may donate the carry)
  batches: Callable[[], Iterator[Batch]]  # its training batches, from the config's data (RL: empty dicts)
  tolerance: float = 1e-4  # |jaxlab_loss - reference_loss| allowed, relative to max(1, |jaxlab_loss|)


FAMILIES = ('gpt', 'cnn', 'vae', 'gcn', 'ppo')


def family(config: ml_collections.ConfigDict) -> str:
  """The reference family of a config: from its task and model."""
  task, model = config.task, config.model.name
  found = {('language_model', 'gpt'): 'gpt', ('classification', 'cnn'): 'cnn',
           ('classification', 'lenet5'): 'cnn', ('vae', 'autoencoder'): 'vae', ('node_classification', 'gcn'): 'gcn',
           ('ppo', 'actor_critic'): 'ppo'}.get((task, model))
  if found is None:
    raise ConfigError(f'bench --bench_against=reference: no reference for task {task!r} with model {model!r}; '
                      f'the references are {", ".join(FAMILIES)} (jaxlab/evaluators/references/)')
  return found


def case(config: ml_collections.ConfigDict, program: Any = None) -> Case:
  """The reference of the config's family, set up from the initial parameters of jaxlab's program for it
  (`program`: jaxlab.run.program.build(config)'s, built here if None)."""
  return importlib.import_module(f'{__name__}.{family(config)}').case(config, program)
