"""The shared part of graph configs (no JAX import: sweep parents load configs without it)."""

import ml_collections

from jaxlab import config as config_lib


def graph_config(dataset: str = 'cora') -> ml_collections.ConfigDict:
  """defaults() for full-batch node classification on a Planetoid graph: one step is one epoch,
  evaluated after every step (early stopping watches every epoch, as the papers did)."""
  config = config_lib.defaults()
  config.task = 'node_classification'
  config.data = ml_collections.ConfigDict(dict(
      name='planetoid', dataset=dataset,
      path='',  # '': $JAXLAB_DATA_DIR/<dataset>
      batch_size=1, eval_batch_size=1))  # whole graphs
  config.train.update(dict(log_every=10, eval_every=1, checkpoint_every=100))
  # Seeds one after another inside the program: vmapped gathers and segment sums of 20 Cora replicas
  # cost 2-2.6x per replica what one run's do on CPU (jaxlab/run/replicas.py).
  config.replica_group = 1
  return config
