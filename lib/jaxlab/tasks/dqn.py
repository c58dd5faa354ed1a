"""Deep Q-learning (Mnih et al. 2015) with the environments and the replay buffer inside the jitted step.

One loop step: `updates_per_step` times, `train_every` ε-greedy steps of `num_envs` environments
into the ring buffer, then (once `learning_starts` environment steps are done) one update of the
squared (or Huber) TD error on a uniform minibatch of the filled slots. The target network is copied from the online one whenever
the environment step count reaches a multiple of `target_every`. Buffer, target network, environments
and counters live in the TrainState's model_state, so checkpoints resume exactly. Targets bootstrap
from the observation a step ended on unless the episode terminated (a truncation bootstraps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.data.environments import Environments, Transition, evaluation_sums
from jaxlab.tasks.base import Batch, Metrics
from jaxlab.tasks.state import TrainState


@dataclasses.dataclass(frozen=True)
class DQNSettings:
  num_envs: int = 1
  buffer_size: int = 10_000
  batch_size: int = 128
  gamma: float = 0.99
  start_epsilon: float = 1.0
  end_epsilon: float = 0.05
  exploration_fraction: float = 0.5  # of all environment steps, over which epsilon falls linearly
  learning_starts: int = 10_000  # environment steps before the first update
  train_every: int = 10  # environment steps per update
  target_every: int = 500  # environment steps between target network copies
  updates_per_step: int = 10  # updates per loop step
  loss: str = 'mse'  # or 'huber' (delta 1), the Nature DQN's clipped error


@flax.struct.dataclass
class ReplayBuffer:
  """A ring of transitions; `size` slots are filled, the next write goes to `position`."""

  obs: jax.Array
  action: jax.Array
  reward: jax.Array
  next_obs: jax.Array
  terminated: jax.Array
  position: jax.Array
  size: jax.Array

  @classmethod
  def empty(cls, capacity: int, obs_shape: tuple[int, ...], obs_dtype: Any) -> 'ReplayBuffer':
    zeros = lambda *shape, dtype=jnp.float32: jnp.zeros((capacity, *shape), dtype)
    return cls(zeros(*obs_shape, dtype=obs_dtype), zeros(dtype=jnp.int32), zeros(), zeros(*obs_shape, dtype=obs_dtype),
               zeros(dtype=bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  @property
  def capacity(self) -> int:
    return self.action.shape[0]

  def add(self, t: Transition) -> 'ReplayBuffer':
    """The transitions of one vectorised step (one per environment), overwriting the oldest when full."""
    slots = (self.position + jnp.arange(t.action.shape[0])) % self.capacity
    put = lambda store, values: store.at[slots].set(values.astype(store.dtype))
    return self.replace(obs=put(self.obs, t.obs), action=put(self.action, t.action), reward=put(self.reward, t.reward),
                        next_obs=put(self.next_obs, t.final_obs), terminated=put(self.terminated, t.terminated),
                        position=(self.position + t.action.shape[0]) % self.capacity,
                        size=jnp.minimum(self.size + t.action.shape[0], self.capacity))

  def sample(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
    """`n` transitions drawn uniformly, with replacement, from the filled slots."""
    rows = jax.random.randint(key, (n,), 0, jnp.maximum(self.size, 1))
    return {k: getattr(self, k)[rows] for k in ('obs', 'action', 'reward', 'next_obs', 'terminated')}


def epsilon(env_steps: jax.Array, settings: DQNSettings, total_env_steps: int) -> jax.Array:
  """start_epsilon falling linearly to end_epsilon over exploration_fraction of the run, then flat."""
  span = max(settings.exploration_fraction * total_env_steps, 1)
  fraction = jnp.clip(env_steps / span, 0.0, 1.0)
  return settings.start_epsilon + fraction * (settings.end_epsilon - settings.start_epsilon)


@dataclasses.dataclass(frozen=True)
class DQN:
  model: nn.Module  # obs -> Q-values
  tx: optax.GradientTransformation
  envs: Environments
  total_env_steps: int
  settings: DQNSettings = DQNSettings()
  curve_metrics: ClassVar[tuple[str, ...]] = ('episode_return',)  # plotted at the end (jaxlab.observe.curves)

  @property
  def env_steps_per_step(self) -> int:
    s = self.settings
    return s.updates_per_step * s.train_every * s.num_envs

  @property
  def items_per_step(self) -> dict[str, int]:
    return {'env_steps': self.env_steps_per_step}

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    params_rng, env_rng, state_rng = jax.random.split(rng, 3)
    runner = self.envs.reset(env_rng)
    params = self.model.init(params_rng, runner.obs)['params']
    buffer = ReplayBuffer.empty(self.settings.buffer_size, self.envs.observation_shape, runner.obs.dtype)
    model_state = {'runner': runner, 'buffer': buffer, 'target': params, 'env_steps': jnp.zeros((), jnp.int32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                      model_state=model_state, rng=state_rng)

  def _loss(self, params: Any, target: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    next_q = self.model.apply({'params': target}, batch['next_obs']).max(-1)
    y = batch['reward'] + self.settings.gamma * jnp.where(batch['terminated'], 0.0, next_q)
    q = jnp.take_along_axis(self.model.apply({'params': params}, batch['obs']), batch['action'][:, None], -1)[:, 0]
    y = jax.lax.stop_gradient(y)
    errors = optax.huber_loss(q, y) if self.settings.loss == 'huber' else 0.5 * jnp.square(q - y)
    return jnp.mean(errors), q.mean()

  def _act(self, params: Any, runner: Any, env_steps: jax.Array, key: jax.Array) -> jax.Array:
    explore_key, action_key = jax.random.split(key)
    greedy = jnp.argmax(self.model.apply({'params': params}, runner.obs), -1)
    random = jax.random.randint(action_key, greedy.shape, 0, self.envs.num_actions)
    explore = jax.random.uniform(explore_key, greedy.shape) < epsilon(env_steps, self.settings, self.total_env_steps)
    return jnp.where(explore, random, greedy)

  def _collect(self, params: Any, model_state: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """train_every vectorised environment steps into the buffer."""

    def env_step(carry, key):
      runner, buffer, env_steps = carry
      act_key, env_key = jax.random.split(key)
      runner, transition = self.envs.step(env_key, runner, self._act(params, runner, env_steps, act_key))
      return (runner, buffer.add(transition), env_steps + self.settings.num_envs), None

    carry = (model_state['runner'], model_state['buffer'], model_state['env_steps'])
    (runner, buffer, env_steps), _ = jax.lax.scan(env_step, carry, jax.random.split(key, self.settings.train_every))
    return {**model_state, 'runner': runner, 'buffer': buffer, 'env_steps': env_steps}

  def _learn(self, params: Any, opt_state: Any, model_state: dict[str, Any], key: jax.Array):
    """One update on a replay minibatch once learning has started, and the target copy when it is due."""
    s = self.settings

    def update(_):
      batch = model_state['buffer'].sample(key, s.batch_size)
      (loss, q), grads = jax.value_and_grad(self._loss, has_aux=True)(params, model_state['target'], batch)
      updates, new_opt_state = self.tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_opt_state, loss, q

    started = model_state['env_steps'] >= s.learning_starts
    params, opt_state, loss, q = jax.lax.cond(
        started, update, lambda _: (params, opt_state, jnp.zeros(()), jnp.zeros(())), None)
    # env_steps advances by train_every * num_envs between checks: the copy falls on the first check at or past
    # each multiple of target_every.
    before = model_state['env_steps'] - s.train_every * s.num_envs
    due = started & (model_state['env_steps'] // s.target_every > before // s.target_every)
    target = jax.tree.map(lambda online, old: jnp.where(due, online, old), params, model_state['target'])
    return params, opt_state, {**model_state, 'target': target}, {'loss': loss, 'q': q,
                                                                 'updated': started.astype(jnp.float32)}

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    def one_update(carry, key):
      params, opt_state, model_state = carry
      collect_key, learn_key = jax.random.split(key)
      model_state = self._collect(params, model_state, collect_key)
      params, opt_state, model_state, metrics = self._learn(params, opt_state, model_state, learn_key)
      return (params, opt_state, model_state), metrics

    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), self.settings.updates_per_step)
    (params, opt_state, model_state), metrics = jax.lax.scan(
        one_update, (state.params, state.opt_state, state.model_state), keys)
    updates = jnp.maximum(metrics['updated'].sum(), 1.0)  # means over the updates that happened
    runner = model_state['runner']
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
    return state, {'loss': metrics['loss'].sum() / updates, 'q': metrics['q'].sum() / updates,
                   'epsilon': epsilon(model_state['env_steps'], self.settings, self.total_env_steps),
                   'episode_return': jnp.mean(runner.last_return),
                   'episode_length': jnp.mean(runner.last_length.astype(jnp.float32))}

  def act(self, params: Any, obs: jax.Array) -> jax.Array:
    return jnp.argmax(self.model.apply({'params': params}, obs), -1)

  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    return evaluation_sums(self.envs, lambda obs: self.act(state.params, obs), batch)
