"""L-infinity adversarial examples for a classifier: FGSM and PGD with random restarts, in pixel space.

Images that the data config normalises, x = (p - mean) / std with pixels p in [0, 1], are
attacked in pixel space: epsilon is in pixel units and every perturbed pixel stays in [0, 1].
Inputs without a pixel scale (MNIST-1D) are perturbed as they are, with no bounds.
Everything here is a pure function of arrays, jitted inside the task's evaluation step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.errors import ConfigError

LogitsFn = Callable[[jax.Array], jax.Array]  # model inputs -> logits
METHODS = ('fgsm', 'pgd')


@dataclasses.dataclass(frozen=True)
class PixelSpace:
  """Model inputs x = (p - mean) / std of pixels p in [low, high] (per channel, the last axis)."""

  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  low: float = -math.inf
  high: float = math.inf

  def to_pixels(self, x: jax.Array) -> jax.Array:
    return x * jnp.asarray(self.std, x.dtype) + jnp.asarray(self.mean, x.dtype)

  def to_inputs(self, p: jax.Array) -> jax.Array:
    return (p - jnp.asarray(self.mean, p.dtype)) / jnp.asarray(self.std, p.dtype)


def pixel_space(data: ml_collections.ConfigDict) -> PixelSpace:
  """Image data blocks (with mean/std) are pixels in [0, 1]; other inputs are unbounded."""
  if 'mean' in data and 'std' in data:
    return PixelSpace(tuple(data.mean), tuple(data.std), 0.0, 1.0)
  return PixelSpace()


@dataclasses.dataclass(frozen=True)
class Attack:
  """One attack at one epsilon; `name` is its metric prefix, e.g. 'pgd_eps0.3'."""

  method: str
  eps: float
  steps: int = 0  # PGD only
  step_size: float = 0.0
  restarts: int = 1

  @property
  def name(self) -> str:
    return f'{self.method}_eps{self.eps:g}'


def _losses(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), y)


def _ascent_sign(logits_fn: LogitsFn, p: jax.Array, y: jax.Array, space: PixelSpace) -> jax.Array:
  """sign of d(summed loss)/d(pixels): each example's own gradient, as examples do not interact."""
  return jnp.sign(jax.grad(lambda q: _losses(logits_fn, space.to_inputs(q), y).sum())(p))


def _project(p: jax.Array, clean: jax.Array, eps: float, space: PixelSpace) -> jax.Array:
  return jnp.clip(jnp.clip(p, clean - eps, clean + eps), space.low, space.high)


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, eps: float, space: PixelSpace) -> jax.Array:
  """Goodfellow et al. (2014): one step of eps along the sign of the loss gradient."""
  p = space.to_pixels(x)
  return space.to_inputs(_project(p + eps * _ascent_sign(logits_fn, p, y, space), p, eps, space))


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, eps: float, steps: int, step_size: float,
        restarts: int, rng: jax.Array, space: PixelSpace) -> jax.Array:
  """Madry et al. (2018): `steps` signed-gradient steps from a uniform random start in the eps-ball,
  projected back after each; per example, the restart that fools the model (else the highest loss)."""
  p = space.to_pixels(x)

  def attack(key: jax.Array) -> jax.Array:
    start = _project(p + jax.random.uniform(key, p.shape, p.dtype, -eps, eps), p, eps, space)
    step = lambda q, _: (_project(q + step_size * _ascent_sign(logits_fn, q, y, space), p, eps, space), None)
    return jax.lax.scan(step, start, None, length=steps)[0]

  def score(q: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = logits_fn(space.to_inputs(q))
    return jnp.argmax(logits, -1) != y, optax.softmax_cross_entropy_with_integer_labels(logits, y)

  def keep_stronger(best: jax.Array, key: jax.Array) -> tuple[jax.Array, None]:
    candidate = attack(key)
    (fooled, loss), (best_fooled, best_loss) = score(candidate), score(best)
    take = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
    return jnp.where(take.reshape(-1, *[1] * (p.ndim - 1)), candidate, best), None

  keys = jax.random.split(rng, restarts)
  best = jax.lax.scan(keep_stronger, attack(keys[0]), keys[1:])[0]
  return space.to_inputs(best)


def perturb(attack: Attack, logits_fn: LogitsFn, x: jax.Array, y: jax.Array, rng: jax.Array,
            space: PixelSpace) -> jax.Array:
  if attack.method == 'fgsm':
    return fgsm(logits_fn, x, y, attack.eps, space)
  return pgd(logits_fn, x, y, attack.eps, attack.steps, attack.step_size, attack.restarts, rng, space)


def _check_at_least_one(**values: int) -> None:
  for key, value in values.items():
    if value < 1:
      raise ConfigError(f'{key.replace("__", ".")} must be >= 1, got {value}')


def from_config(config: ml_collections.ConfigDict) -> tuple[Attack, ...]:
  """The attacks of `config.eval`: every method of eval.attacks at every epsilon of eval.attack_eps."""
  e = config.eval
  unknown = [m for m in e.attacks if m not in METHODS]
  if unknown:
    raise ConfigError(f'eval.attacks: unknown method(s) {unknown}; known: {", ".join(METHODS)}')
  for eps in e.attack_eps:
    if not eps > 0:
      raise ConfigError(f'eval.attack_eps must be positive, got {eps}')
    if not math.isfinite(eps):  # inf would turn every input into NaN, and the accuracy with it
      raise ConfigError(f'eval.attack_eps must be finite, got {eps}')
  _check_at_least_one(eval__pgd_steps=e.pgd_steps, eval__pgd_restarts=e.pgd_restarts)
  return tuple(Attack(method, float(eps), e.pgd_steps, e.pgd_step_size or 2.5 * eps / e.pgd_steps, e.pgd_restarts)
               for eps in e.attack_eps for method in e.attacks)


# Share of the training loss on adversarial examples when loss.adversarial_weight is 0.
DEFAULT_WEIGHTS = {'fgsm': 0.5, 'pgd': 1.0}


def training_attack(loss: ml_collections.ConfigDict) -> tuple[Attack | None, float]:
  """(the attack adversarial training uses, the weight of its loss) from the `loss` block; (None, 0) when off.

  FGSM at weight 0.5 is Goodfellow et al.'s mixture 0.5 J(x) + 0.5 J(x + eps sign grad J); PGD at
  weight 1 is Madry et al.'s training on the worst case found in the eps-ball only.
  """
  if not loss.adversarial:
    return None, 0.0
  if loss.adversarial not in METHODS:
    raise ConfigError(f'loss.adversarial: unknown method {loss.adversarial!r}; known: {", ".join(METHODS)} '
                      "('' is off)")
  if not loss.adversarial_eps > 0:
    raise ConfigError(f'loss.adversarial_eps must be positive, got {loss.adversarial_eps}')
  if not 0 <= loss.adversarial_weight <= 1:
    raise ConfigError(f'loss.adversarial_weight must be in [0, 1] (0: the method\'s own), got {loss.adversarial_weight}')
  _check_at_least_one(loss__adversarial_steps=loss.adversarial_steps)
  eps = float(loss.adversarial_eps)
  step_size = loss.adversarial_step_size or 2.5 * eps / loss.adversarial_steps
  attack = Attack(loss.adversarial, eps, loss.adversarial_steps, step_size, 1)
  return attack, loss.adversarial_weight or DEFAULT_WEIGHTS[loss.adversarial]
