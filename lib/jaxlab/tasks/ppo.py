"""Proximal policy optimisation (Schulman et al. 2017) with the environments inside the jitted step.

One loop step: `num_steps` steps of `num_envs` environments, GAE, then `epochs` passes of
`minibatches` clipped-objective updates (PureJaxRL's structure; CleanRL's details: per-minibatch
advantage normalisation, clipped value loss, orthogonal initialisation). The environments, their
running episodes and the keys are in the TrainState (`model_state['runner']`), so a resumed run
continues exactly. Truncated episodes (a time limit) bootstrap from the value of the observation they
ended on; terminated ones from nothing. Evaluation plays `data.eval_episodes` greedy episodes from
fixed starts and reports their mean return.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.data.environments import Environments, evaluation_sums
from jaxlab.tasks.base import Batch, Metrics
from jaxlab.tasks.state import TrainState

RUNNER = 'runner'


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  num_envs: int = 4
  num_steps: int = 128
  epochs: int = 4
  minibatches: int = 4
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip: float = 0.2
  entropy_coef: float = 0.01
  value_coef: float = 0.5


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array, truncated: jax.Array,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  """(advantages, value targets) over time-major arrays (steps, envs), by generalised advantage estimation.

  next_values[t] is the value of the observation step t ended on (the final one of an episode that ended):
  a termination bootstraps from 0, a truncation from that value; either ends the trace.
  """
  deltas = rewards + gamma * jnp.where(terminated, 0.0, next_values) - values
  carry_on = gamma * lam * (1.0 - (terminated | truncated))

  def backwards(advantage, t):
    advantage = deltas[t] + carry_on[t] * advantage
    return advantage, advantage

  _, advantages = jax.lax.scan(backwards, jnp.zeros_like(values[0]), jnp.arange(len(rewards)), reverse=True)
  return advantages, advantages + values


def clipped_surrogate(ratio: jax.Array, advantages: jax.Array, clip: float) -> jax.Array:
  """PPO's policy loss: -mean(min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A))."""
  return -jnp.mean(jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip, 1 + clip) * advantages))


@dataclasses.dataclass(frozen=True)
class PPO:
  model: nn.Module  # obs -> (logits, value)
  tx: optax.GradientTransformation
  envs: Environments
  settings: PPOSettings = PPOSettings()
  curve_metrics: ClassVar[tuple[str, ...]] = ('episode_return',)  # plotted at the end (jaxlab.observe.curves)

  @property
  def items_per_step(self) -> dict[str, int]:
    return {'env_steps': self.envs.num_envs * self.settings.num_steps}

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    params_rng, env_rng, state_rng = jax.random.split(rng, 3)
    obs = jnp.zeros((1, *self.envs.observation_shape))
    params = self.model.init(params_rng, obs)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                      model_state={RUNNER: self.envs.reset(env_rng)}, rng=state_rng)

  def _rollout(self, params: Any, runner: Any, rng: jax.Array):
    def env_step(runner, key):
      act_key, env_key = jax.random.split(key)
      logits, value = self.model.apply({'params': params}, runner.obs)
      action = jax.random.categorical(act_key, logits)
      log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
      runner, transition = self.envs.step(env_key, runner, action)
      return runner, (transition, value, log_prob)

    return jax.lax.scan(env_step, runner, jax.random.split(rng, self.settings.num_steps))

  def _loss(self, params: Any, minibatch: dict[str, jax.Array]):
    s = self.settings
    logits, values = self.model.apply({'params': params}, minibatch['obs'])
    log_probs = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_probs, minibatch['action'][:, None], -1)[:, 0]
    ratio = jnp.exp(log_prob - minibatch['log_prob'])
    advantages = minibatch['advantage']
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = clipped_surrogate(ratio, advantages, s.clip)
    clipped_values = minibatch['value'] + jnp.clip(values - minibatch['value'], -s.clip, s.clip)
    value_loss = 0.5 * jnp.mean(jnp.maximum(jnp.square(values - minibatch['target']),
                                            jnp.square(clipped_values - minibatch['target'])))
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, -1))
    loss = policy_loss + s.value_coef * value_loss - s.entropy_coef * entropy
    return loss, {'policy_loss': policy_loss, 'value_loss': value_loss, 'entropy': entropy,
                  'approx_kl': jnp.mean(minibatch['log_prob'] - log_prob),
                  'clip_fraction': jnp.mean(jnp.abs(ratio - 1) > s.clip)}

  def _update(self, params: Any, opt_state: Any, data: dict[str, jax.Array], rng: jax.Array):
    s = self.settings
    size = s.num_envs * s.num_steps

    def epoch(carry, key):
      order = jax.random.permutation(key, size)
      minibatches = jax.tree.map(lambda x: x[order].reshape(s.minibatches, -1, *x.shape[1:]), data)

      def minibatch_step(carry, minibatch):
        params, opt_state = carry
        (loss, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(params, minibatch)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {'loss': loss, **aux,
                                                                   'grad_norm': optax.tree.norm(grads)}

      return jax.lax.scan(minibatch_step, carry, minibatches)

    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), jax.random.split(rng, s.epochs))
    return params, opt_state, jax.tree.map(jnp.mean, metrics)

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    s = self.settings
    rollout_rng, update_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    runner, (transition, values, log_probs) = self._rollout(state.params, state.model_state[RUNNER], rollout_rng)
    steps, envs = transition.reward.shape
    _, next_values = self.model.apply({'params': state.params}, transition.final_obs.reshape(steps * envs, -1))
    next_values = next_values.reshape(steps, envs)
    advantages, targets = gae(transition.reward, values, next_values, transition.terminated, transition.truncated,
                              s.gamma, s.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    data = {'obs': flat(transition.obs), 'action': flat(transition.action), 'log_prob': flat(log_probs),
            'value': flat(values), 'advantage': flat(advantages), 'target': flat(targets)}
    params, opt_state, metrics = self._update(state.params, state.opt_state, data, update_rng)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state={RUNNER: runner})
    return state, {**metrics, 'episode_return': jnp.mean(runner.last_return),
                   'episode_length': jnp.mean(runner.last_length.astype(jnp.float32))}

  def act(self, params: Any, obs: jax.Array) -> jax.Array:
    """The deterministic policy: the likeliest action."""
    return jnp.argmax(self.model.apply({'params': params}, obs)[0], -1)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    return evaluation_sums(self.envs, lambda obs: self.act(state.params, obs), batch)
