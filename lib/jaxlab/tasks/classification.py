"""Supervised classification: softmax cross-entropy on batch['x'] -> batch['y']."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.tasks.attacks import Attack, PixelSpace, perturb
from jaxlab.tasks.base import Batch, Metrics, OneModel
from jaxlab.tasks.state import TrainState


def weight_penalty(params: Any, l1: float, l2: float, paths: str = '') -> jax.Array:
  """l1 * sum|w| + l2/2 * sum w^2 over the kernels (not biases or BatchNorm scales) whose path
  ('layer_0/kernel') `paths` matches at its start; '' matches all."""
  pattern = re.compile(paths)
  kernels = [w for path, w in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == 'kernel' and pattern.match('/'.join(k.key for k in path))]
  total = jnp.zeros((), jnp.float32)
  if l1:
    total += l1 * sum(jnp.sum(jnp.abs(w)) for w in kernels)
  if l2:
    total += 0.5 * l2 * sum(jnp.sum(jnp.square(w)) for w in kernels)
  return total


@dataclasses.dataclass(frozen=True)
class Classification(OneModel):
  model: nn.Module
  tx: optax.GradientTransformation
  num_classes: int
  label_smoothing: float = 0.0
  l1: float = 0.0
  l2: float = 0.0
  penalty_paths: str = ''
  attacks: tuple[Attack, ...] = ()  # robust accuracy under each, at every evaluation
  pixel_space: PixelSpace = PixelSpace()

  adversarial: Attack | None = None  # adversarial training: examples made by this attack inside the step
  adversarial_weight: float = 0.0  # the adversarial share of the loss

  def _forward(self, params, state: TrainState, x: jax.Array, rng: jax.Array):
    return self.model.apply({'params': params, **state.model_state}, x, train=True, rngs={'dropout': rng},
                            mutable=list(state.model_state))

  def _cross_entropy(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    smoothed = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), self.label_smoothing)
    return optax.softmax_cross_entropy(logits, smoothed).mean()

  def _adversarial_inputs(self, params, state: TrainState, batch: Batch, rng: jax.Array) -> jax.Array:
    """The attack on the model as it trains (same dropout, batch statistics of the batch), with the
    parameters held constant: the examples are inputs to the loss, not a function of the weights."""
    frozen = jax.lax.stop_gradient(params)
    logits_fn = lambda x: self._forward(frozen, state, x, rng)[0]
    return jax.lax.stop_gradient(perturb(self.adversarial, logits_fn, batch['x'], batch['y'],
                                         jax.random.fold_in(rng, 1), self.pixel_space))

  def _loss(self, params, state: TrainState, batch: Batch):
    # Per-step randomness from (run rng, step): identical whether or not the run was resumed.
    rng = jax.random.fold_in(state.rng, state.step)
    logits, updates = self._forward(params, state, batch['x'], rng)
    loss, aux = self._cross_entropy(logits, batch['y']), {}
    if self.adversarial is not None:
      adversarial_logits, adversarial_updates = self._forward(
          params, state, self._adversarial_inputs(params, state, batch, rng), rng)
      adversarial_loss = self._cross_entropy(adversarial_logits, batch['y'])
      loss = (1 - self.adversarial_weight) * loss + self.adversarial_weight * adversarial_loss
      aux = {'adversarial_loss': adversarial_loss,
             'adversarial_accuracy': jnp.mean(jnp.argmax(adversarial_logits, -1) == batch['y'])}
      if self.adversarial_weight == 1:  # only adversarial examples are trained on: their statistics count
        updates = adversarial_updates
    loss += weight_penalty(params, self.l1, self.l2, self.penalty_paths)
    return loss, (logits, updates, aux)

  def gradients(self, state: TrainState, batch: Batch) -> tuple[Any, Metrics, Any]:
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    (loss, (logits, model_state, aux)), grads = grad_fn(state.params, state, batch)
    return grads, {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['y']), **aux}, dict(model_state)

  def logits_fn(self, state: TrainState) -> Callable[[jax.Array], jax.Array]:
    """inputs -> logits of the model in evaluation mode (no dropout, running BatchNorm statistics)."""
    return lambda x: self.model.apply({'params': state.params, **state.model_state}, x, train=False)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    logits_fn = self.logits_fn(state)
    real = batch['mask'] > 0
    sums = eval_sums(logits_fn(batch['x']), batch['y'], real, self.num_classes)
    for attack in self.attacks:  # PGD's random starts from a fixed key: every evaluation attacks alike
      adversarial = perturb(attack, logits_fn, batch['x'], batch['y'], jax.random.key(0), self.pixel_space)
      hits = (jnp.argmax(logits_fn(adversarial), -1) == batch['y']) & real
      sums[f'{attack.name}_accuracy'] = jnp.sum(hits, dtype=jnp.int32)
    return sums


def eval_sums(logits: jax.Array, labels: jax.Array, real: jax.Array, num_classes: int) -> Metrics:
  """Sums over the real examples: loss, correct, top-5 correct (over 5 classes), and the confusion matrix."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  predicted = jnp.argmax(logits, -1)
  # Counts in int32: float32 sums are exact only up to 2**24 examples.
  count = lambda hits: jnp.sum(hits & real, dtype=jnp.int32)
  sums = {'loss': jnp.sum(jnp.where(real, loss, 0.0)), 'accuracy': count(predicted == labels),
          'count': count(jnp.ones_like(real))}
  if num_classes > 5:
    sums['top5_accuracy'] = count(jnp.any(jax.lax.top_k(logits, 5)[1] == labels[:, None], axis=-1))
  # confusion[true, predicted] as a matmul: O(batch * classes^2) memory would not fit ImageNet.
  truth = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * real[:, None]
  sums['confusion'] = truth.T @ jax.nn.one_hot(predicted, num_classes, dtype=jnp.int32)
  return sums
