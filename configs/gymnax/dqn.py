"""DQN on gymnax CartPole-v1 with CleanRL's hyperparameters: one environment, buffer 10,000, batch 128,
epsilon 1 -> 0.05 over half of 500,000 environment steps, target network copied every 500 steps,
Adam 2.5e-4, learning from step 10,000, one update every 10 steps, gamma 0.99; Q-network 120-84 ReLU.
The loss is the squared TD error, as CleanRL's: with `dqn.loss=huber` the Q-values of seed 0 grew past
4e7 by the end (measured, 2026-12-05), where the squared error reached return 500. A loop step is 10
updates (100 environment steps), so 5,000 loop steps, up to 250 of them (a log line's) per call of the compiled
program. `dqn.py:acrobot` is the same on Acrobot-v1. `launch.py sweep --config=configs/gymnax/dqn.py
--config.num_replicas=5`: three learning rates, each point 5 seeds in one vmapped program.
"""

from jaxlab import config as config_lib
from jaxlab.data.episodes import data_config
from jaxlab.launch.sweep import product

ENVS = {'cartpole': 'CartPole-v1', 'acrobot': 'Acrobot-v1'}
TOTAL_ENV_STEPS = 500_000


def get_config(arg='cartpole'):
  if arg not in ENVS:
    raise ValueError(f"dqn.py takes one of {', '.join(ENVS)}, got {arg!r}")
  config = config_lib.defaults()
  config.task = 'dqn'
  config.env = dict(name=ENVS[arg])
  config.data = data_config(eval_episodes=10)
  config.model = dict(name='q_network', hidden=(120, 84), activation='relu')
  config.dqn = dict(num_envs=1, buffer_size=10_000, batch_size=128, gamma=0.99, start_epsilon=1.0, end_epsilon=0.05,
                    exploration_fraction=0.5, learning_starts=10_000, train_every=10, target_every=500,
                    updates_per_step=10, loss='mse')
  config.optimizer.update(dict(name='adam', learning_rate=2.5e-4, schedule='constant'))
  num_steps = TOTAL_ENV_STEPS // (10 * 10)
  config.train.update(dict(num_steps=num_steps, log_every=250, eval_every=num_steps, checkpoint_every=1000,
                           steps_per_call=250))
  return config


def sweep(arg='cartpole'):
  del arg
  return product(('optimizer.learning_rate', [1e-4, 2.5e-4, 1e-3]))
