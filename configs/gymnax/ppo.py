"""PPO on gymnax CartPole-v1 with CleanRL's and PureJaxRL's hyperparameters: 4 environments x 128 steps per
update, 4 epochs of 4 minibatches, gamma 0.99, GAE lambda 0.95, clip 0.2, entropy 0.01, value 0.5, gradient
norm 0.5, Adam 2.5e-4 (eps 1e-5) annealed linearly to 0, 500,000 environment steps (976 loop steps).
Evaluation: 10 greedy episodes from fixed starts at the end. `ppo.py:acrobot` is the same on Acrobot-v1.
One call of the compiled program runs the loop steps up to the next log line: a CartPole step took ~3.2 ms
inside one lax.scan and ~3.9 ms called one by one (experiments/rl_cartpole/bench.py --dispatch, 2-core CPU).
`ppo.py:space_invaders`: SpaceInvaders-MinAtar with PureJaxRL's MinAtar settings (examples/brax_minatar.ipynb):
64 environments x 128 steps, 8 minibatches, Adam 5e-3 annealed, ReLU, 10,000,000 environment steps.
`launch.py sweep --config=configs/gymnax/ppo.py --config.num_replicas=10`: three learning rates, each point
10 seeds in one vmapped program.
"""

from jaxlab import config as config_lib
from jaxlab.data.episodes import data_config
from jaxlab.launch.sweep import product

ENVS = {'cartpole': 'CartPole-v1', 'acrobot': 'Acrobot-v1', 'space_invaders': 'SpaceInvaders-MinAtar'}


def get_config(arg='cartpole'):
  if arg not in ENVS:
    raise ValueError(f"ppo.py takes one of {', '.join(ENVS)}, got {arg!r}")
  config = config_lib.defaults()
  config.task = 'ppo'
  config.env = dict(name=ENVS[arg])
  config.data = data_config(eval_episodes=10)
  minatar = arg == 'space_invaders'
  num_envs, minibatches, total = (64, 8, 10_000_000) if minatar else (4, 4, 500_000)
  config.model = dict(name='actor_critic', hidden=(64, 64), activation='relu' if minatar else 'tanh')
  config.ppo = dict(num_envs=num_envs, num_steps=128, epochs=4, minibatches=minibatches, gamma=0.99, gae_lambda=0.95,
                    clip=0.2, entropy_coef=0.01, value_coef=0.5)
  config.optimizer.update(dict(name='adam', learning_rate=5e-3 if minatar else 2.5e-4, eps=1e-5, schedule='linear',
                               final_lr_fraction=0.0, grad_clip_norm=0.5))
  num_steps = total // (num_envs * 128)
  log_every = 100 if not minatar else 20
  config.train.update(dict(num_steps=num_steps, log_every=log_every, eval_every=num_steps,
                           checkpoint_every=500 if not minatar else 100, steps_per_call=log_every))
  return config


def sweep(arg='cartpole'):
  rates = [2e-3, 5e-3, 2e-2] if arg == 'space_invaders' else [1e-4, 2.5e-4, 1e-3]
  return product(('optimizer.learning_rate', rates))
