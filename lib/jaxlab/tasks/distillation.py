"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student classifier learns a finished run's soft targets.

The teacher's variables sit, frozen, in the TrainState (the model-state collection 'teacher', checkpointed with
the student), so its logits are computed inside the jitted step; its workdir is read again at every
start, for its model and to check it. The
loss is T^2 KL(softmax(teacher / T) || softmax(student / T)) + hard_weight * cross-entropy(labels):
the T^2 keeps the soft term's gradients the same size at any temperature (Hinton et al. section 2).
Evaluation is the student's, as a classifier.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.tasks.base import Batch, Metrics
from jaxlab.tasks.classification import Classification
from jaxlab.tasks.state import TrainState

TEACHER = 'teacher'  # the model-state collection holding the teacher's variables


def soft_target_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """T^2 * mean over the batch of KL(softmax(teacher / T) || softmax(student / T))."""
  teacher = jax.nn.log_softmax(teacher_logits / temperature)
  student = jax.nn.log_softmax(student_logits / temperature)
  kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


@dataclasses.dataclass(frozen=True)
class Distillation:
  student: Classification
  teacher: nn.Module
  teacher_variables: Any  # numpy arrays: {'params': ..., other collections}
  temperature: float
  hard_weight: float

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.student.tx

  def _student_state(self, state: TrainState) -> TrainState:
    return state.replace(model_state={k: v for k, v in state.model_state.items() if k != TEACHER})

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    state = self.student.init(rng, batch)
    teacher = jax.tree.map(jnp.asarray, self.teacher_variables)
    return state.replace(model_state={**state.model_state, TEACHER: teacher})

  def param_axes(self, batch: Batch) -> Any:
    return self.student.param_axes(batch)

  def teacher_logits(self, state: TrainState, x: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(self.teacher.apply(state.model_state[TEACHER], x, train=False))

  def _loss(self, params: Any, state: TrainState, batch: Batch):
    student_state = self._student_state(state)
    rng = jax.random.fold_in(state.rng, state.step)
    logits, updates = self.student._forward(params, student_state, batch['x'], rng)
    soft = soft_target_loss(logits, self.teacher_logits(state, batch['x']), self.temperature)
    hard = self.student._cross_entropy(logits, batch['y'])
    return soft + self.hard_weight * hard, (logits, updates, {'soft_loss': soft, 'hard_loss': hard})

  def gradients(self, state: TrainState, batch: Batch) -> tuple[Any, Metrics, Any]:
    (loss, (logits, updates, aux)), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, state, batch)
    metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['y']), **aux}
    return grads, metrics, {**updates, TEACHER: state.model_state[TEACHER]}

  def apply_gradients(self, state: TrainState, grads: Any, model_state: Any) -> TrainState:
    return self.student.apply_gradients(state, grads, model_state)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    grads, metrics, model_state = self.gradients(state, batch)
    return self.apply_gradients(state, grads, model_state), {**metrics, 'grad_norm': optax.tree.norm(grads)}

  def logits_fn(self, state: TrainState) -> Callable[[jax.Array], jax.Array]:
    return self.student.logits_fn(self._student_state(state))

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    return self.student.eval_step(self._student_state(state), batch)
