"""Checks a model's `validate()` uses on its own attributes; models.create turns ValueError into one line."""

from __future__ import annotations

from typing import Any, Iterable


def positive(**values: int | Iterable[int]) -> None:
  """Each value (or every entry of a sequence value) is a positive number."""
  for name, value in values.items():
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, (int, float)) and v > 0 for v in entries):
      raise ValueError(f'{name} must be positive, got {value!r}')


def rate(**values: float) -> None:
  """Each value is a probability in [0, 1), e.g. a dropout rate."""
  for name, value in values.items():
    if not 0 <= value < 1:
      raise ValueError(f'{name} must be in [0, 1), got {value!r}')


def one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
  choices = list(choices)
  if value not in choices:
    raise ValueError(f'unknown {name} {value!r}; choose from {", ".join(map(str, choices))}')
