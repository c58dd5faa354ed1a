"""gymnax environments as the RL tasks use them: vectorised steps that keep the final observation,
episode bookkeeping carried in the TrainState, and greedy evaluation episodes.

gymnax 1.x `step` returns (obs, state, reward, terminated, truncated, info) and resets an episode
that ended; `info['final_observation']` is the observation the episode ended on, which bootstrapping
after a truncation (a time limit, not a failure) needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError

EVAL_KEY = 0  # evaluation episode i starts from fold_in(key(EVAL_KEY), i), the same in every run


@flax.struct.dataclass
class Transition:
  """One vectorised environment step, arrays over the environments."""

  obs: jax.Array
  action: jax.Array
  reward: jax.Array
  terminated: jax.Array
  truncated: jax.Array
  final_obs: jax.Array  # what the agent saw when the step ended: the next observation, or the last of its episode


@flax.struct.dataclass
class Runner:
  """The environments between loop steps (held in the TrainState, so checkpoints resume them exactly)."""

  obs: jax.Array
  env_state: Any
  episode_return: jax.Array  # of the running episodes
  episode_length: jax.Array
  last_return: jax.Array  # of each environment's last finished episode (0 before the first)
  last_length: jax.Array


@dataclasses.dataclass(frozen=True)
class Environments:
  """`num_envs` copies of the gymnax environment `name` (the tasks' factories check num_envs >= 1)."""

  name: str
  num_envs: int

  def __post_init__(self):
    import gymnax
    if self.name not in gymnax.registered_envs:
      raise ConfigError(f'unknown env.name {self.name!r}; gymnax has {", ".join(gymnax.registered_envs)}')
    env, params = gymnax.make(self.name)
    space = env.action_space(params)
    if not hasattr(space, 'n'):  # gymnax's spaces.Discrete; a Box is continuous
      raise ConfigError(f'env.name {self.name!r} has continuous actions ({type(space).__name__}); the ppo and dqn '
                        'tasks choose among discrete actions (CartPole-v1, Acrobot-v1, MinAtar ...)')
    object.__setattr__(self, 'env', env)
    object.__setattr__(self, 'params', params)

  @property
  def num_actions(self) -> int:
    return self.env.action_space(self.params).n

  @property
  def observation_shape(self) -> tuple[int, ...]:
    return tuple(self.env.observation_space(self.params).shape)

  @property
  def max_steps(self) -> int:
    return int(self.params.max_steps_in_episode)

  def reset(self, key: jax.Array) -> Runner:
    obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(key, self.num_envs), self.params)
    zeros = lambda dtype: jnp.zeros(self.num_envs, dtype)  # separate buffers: a donated state may not alias
    return Runner(obs, env_state, zeros(jnp.float32), zeros(jnp.int32), zeros(jnp.float32), zeros(jnp.int32))

  def step(self, key: jax.Array, runner: Runner, action: jax.Array) -> tuple[Runner, Transition]:
    keys = jax.random.split(key, self.num_envs)
    obs, env_state, reward, terminated, truncated, info = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
        keys, runner.env_state, action, self.params)
    done = terminated | truncated
    transition = Transition(runner.obs, action, reward.astype(jnp.float32), terminated, truncated,
                            info['final_observation'])
    episode_return = runner.episode_return + reward
    episode_length = runner.episode_length + 1
    runner = Runner(obs, env_state, jnp.where(done, 0.0, episode_return), jnp.where(done, 0, episode_length),
                    jnp.where(done, episode_return, runner.last_return), jnp.where(done, episode_length, runner.last_length))
    return runner, transition

  def episode_returns(self, act: Callable[[jax.Array], jax.Array], index: jax.Array) -> jax.Array:
    """The return of one episode per entry of `index`, from its fixed start, acting by `act(obs) -> action`."""

    def one(i):
      obs, env_state = self.env.reset(jax.random.fold_in(jax.random.key(EVAL_KEY), i), self.params)

      def step(carry, t):
        obs, env_state, total, running = carry
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(EVAL_KEY + 1), i), t)
        obs, env_state, reward, terminated, truncated, _ = self.env.step(key, env_state, act(obs[None])[0], self.params)
        return (obs, env_state, total + running * reward, running & ~(terminated | truncated)), None

      carry = (obs, env_state, jnp.zeros((), jnp.float32), jnp.ones((), bool))
      (_, _, total, _), _ = jax.lax.scan(step, carry, jnp.arange(self.max_steps))
      return total

    return jax.vmap(one)(index)


def evaluation_sums(envs: Environments, act: Callable[[jax.Array], jax.Array], batch: dict[str, jax.Array]) -> dict:
  """An RL task's eval_step: the summed return of the batch's evaluation episodes, played by `act`."""
  returns = envs.episode_returns(act, batch['index'])
  real = batch['mask'] > 0
  return {'return': jnp.sum(jnp.where(real, returns, 0.0)), 'count': jnp.sum(real, dtype=jnp.int32)}
