"""Components named in a config: a built-in name, or `package.module:Name` importable from the project."""

from __future__ import annotations

import importlib
from typing import Mapping, TypeVar

from jaxlab.errors import ConfigError

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
