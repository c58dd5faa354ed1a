"""PPO (PureJaxRL's structure, CleanRL's loss) with separate actor and critic MLPs in plain jax.numpy.

One step: `num_steps` steps of `num_envs` gymnax environments (gymnax's own step resets an episode that
ended), GAE, then `epochs` passes over `minibatches` shuffled minibatches of clipped-objective updates:
advantages normalised per minibatch, clipped value loss, entropy bonus. A truncated episode (the time
limit) bootstraps from the value of the observation it ended on, a terminated one from nothing.
Parameters are {'actor': layers, 'critic': layers}, each layer {'w', 'b'} and the last one linear;
`from_jaxlab` renames jaxlab's ActorCritic parameters into it.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab.evaluators.references import Case, common

ACTIVATIONS = {'tanh': jnp.tanh, 'relu': jax.nn.relu}
Activation = Callable[[jax.Array], jax.Array]


def mlp(layers: list[dict[str, jax.Array]], x: jax.Array, activation: Activation) -> jax.Array:
  for layer in layers[:-1]:
    x = activation(x @ layer['w'] + layer['b'])
  return x @ layers[-1]['w'] + layers[-1]['b']


def policy(p: dict[str, Any], obs: jax.Array, activation: Activation) -> tuple[jax.Array, jax.Array]:
  """(action logits, state values) of a batch of observations, flattened to vectors."""
  x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
  return mlp(p['actor'], x, activation), mlp(p['critic'], x, activation)[:, 0]


def loss(p: dict[str, Any], mb: dict[str, jax.Array], s: Any, activation: Activation) -> jax.Array:
  """The clipped PPO objective of one minibatch; `s` has clip, value_coef and entropy_coef."""
  logits, values = policy(p, mb['obs'], activation)
  log_probs = jax.nn.log_softmax(logits)
  ratio = jnp.exp(log_probs[jnp.arange(len(mb['action'])), mb['action']] - mb['log_prob'])
  advantages = (mb['advantage'] - mb['advantage'].mean()) / (mb['advantage'].std() + 1e-8)
  policy_loss = -jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - s.clip, 1 + s.clip) * advantages).mean()
  clipped = mb['value'] + jnp.clip(values - mb['value'], -s.clip, s.clip)
  value_loss = 0.5 * jnp.maximum((values - mb['target']) ** 2, (clipped - mb['target']) ** 2).mean()
  entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
  return policy_loss + s.value_coef * value_loss - s.entropy_coef * entropy


def gae(traj: dict[str, jax.Array], next_values: jax.Array, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  """(advantages, value targets) of a time-major trajectory; next_values[t]: the value of what step t ended on."""

  def backwards(advantage, t):
    reward, value, next_value, terminated, truncated = t
    delta = reward + gamma * next_value * (1.0 - terminated) - value
    advantage = delta + gamma * lam * (1.0 - jnp.maximum(terminated, truncated)) * advantage
    return advantage, advantage

  steps = (traj['reward'], traj['value'], next_values, traj['terminated'], traj['truncated'])
  _, advantages = jax.lax.scan(backwards, jnp.zeros_like(next_values[0]), steps, reverse=True)
  return advantages, advantages + traj['value']


def _dense_from(p: dict[str, Any]) -> dict[str, Any]:
  return {'w': p['kernel'], 'b': p['bias']}


def _torso_from(p: dict[str, Any]) -> list[dict[str, Any]]:
  return [_dense_from(p[name]) for name in sorted(p, key=lambda k: int(k.split('_')[1]))]


def from_jaxlab(params: dict[str, Any]) -> dict[str, Any]:
  """jaxlab's ActorCritic parameters (models/policies.py: torsos 'actor' and 'critic', then the heads Dense_0
  for the logits and Dense_1 for the value, in call order) in the reference's layout."""
  return {'actor': _torso_from(params['actor']) + [_dense_from(params['Dense_0'])],
          'critic': _torso_from(params['critic']) + [_dense_from(params['Dense_1'])]}


def _check_minibatch(size: int, obs_shape: tuple[int, ...], num_actions: int, seed: int) -> dict[str, np.ndarray]:
  """A fixed minibatch whose old log-probabilities and values put some ratios and values inside the clip range
  and some outside (the initial policy is near uniform)."""
  rng = np.random.default_rng(seed)
  value = rng.normal(size=size).astype(np.float32)
  return {'obs': rng.normal(size=(size, *obs_shape)).astype(np.float32),
          'action': rng.integers(0, num_actions, size).astype(np.int32),
          'log_prob': (np.log(1 / num_actions) + 0.2 * rng.normal(size=size)).astype(np.float32),
          'value': value, 'advantage': rng.normal(size=size).astype(np.float32),
          'target': (value + rng.normal(size=size)).astype(np.float32)}


def case(config: ml_collections.ConfigDict, program: Any = None) -> Case:
  setup = common.setup(config, program)
  s = setup.task.settings  # PPOSettings: the config's ppo block over the defaults
  activation = ACTIVATIONS[config.model.activation]
  env, env_params = gymnax.make(config.env.name)
  obs_shape = tuple(env.observation_space(env_params).shape)
  params = from_jaxlab(setup.params)
  size = s.num_envs * s.num_steps
  check = jax.tree.map(jnp.asarray, _check_minibatch(size // s.minibatches, obs_shape, env.action_space(env_params).n,
                                                     config.seed))
  jaxlab_loss, _ = setup.task._loss(setup.params, check)
  env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def rollout(params, obs, env_state, key):
    def one(carry, key):
      obs, env_state = carry
      act_key, env_key = jax.random.split(key)
      logits, value = policy(params, obs, activation)
      action = jax.random.categorical(act_key, logits)
      log_prob = jax.nn.log_softmax(logits)[jnp.arange(s.num_envs), action]
      next_obs, env_state, reward, terminated, truncated, info = env_step(
          jax.random.split(env_key, s.num_envs), env_state, action, env_params)
      return (next_obs, env_state), {'obs': obs, 'action': action, 'log_prob': log_prob, 'value': value,
                                     'reward': reward.astype(jnp.float32), 'terminated': terminated.astype(jnp.float32),
                                     'truncated': truncated.astype(jnp.float32), 'final_obs': info['final_observation']}

    return jax.lax.scan(one, (obs, env_state), jax.random.split(key, s.num_steps))

  def update(params, opt_state, data, key):
    def epoch(carry, key):
      order = jax.random.permutation(key, size)
      shuffled = jax.tree.map(lambda x: x[order].reshape(s.minibatches, -1, *x.shape[1:]), data)

      def minibatch(carry, mb):
        params, opt_state = carry
        grads = jax.grad(loss)(params, mb, s, activation)
        updates, opt_state = setup.tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

      return jax.lax.scan(minibatch, carry, shuffled)[0], None

    return jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, s.epochs))[0]

  def step(carry, batch):
    params, opt_state, step, obs, env_state, key = carry
    key, rollout_key, update_key = jax.random.split(key, 3)
    (obs, env_state), traj = rollout(params, obs, env_state, rollout_key)
    # One batched critic pass over the observations each step ended on: the next observation, or for an episode
    # that ended the last one it saw (gymnax has already reset it), which a truncation bootstraps from.
    _, next_values = policy(params, traj['final_obs'].reshape(size, *obs_shape), activation)
    advantages, targets = gae(traj, next_values.reshape(s.num_steps, s.num_envs), s.gamma, s.gae_lambda)
    data = {'obs': traj['obs'], 'action': traj['action'], 'log_prob': traj['log_prob'], 'value': traj['value'],
            'advantage': advantages, 'target': targets}
    data = jax.tree.map(lambda x: x.reshape(size, *x.shape[2:]), data)
    params, opt_state = update(params, opt_state, data, update_key)
    return params, opt_state, step + 1, obs, env_state, key

  key, reset_key = jax.random.split(jax.random.PRNGKey(config.seed))
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, s.num_envs), env_params)
  return Case(jaxlab_loss=float(jaxlab_loss), reference_loss=float(loss(params, check, s, activation)),
              init=lambda: common.fresh(params, setup.tx, obs, env_state, key), step=jax.jit(step, donate_argnums=0),
              batches=setup.batches)
