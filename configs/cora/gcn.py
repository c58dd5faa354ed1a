"""GCN (Kipf & Welling 2017) on the Planetoid split of Cora: the paper's Table 2 gives 81.5 % test accuracy.

2 layers, 16 hidden, dropout 0.5, L2 5e-4 on the first layer, Adam 0.01, at most 200 epochs
(one epoch = one full-batch step), early stopping on the validation loss with a window of 10
evaluations. Many seeds in one program: --config.num_replicas=20 (each replica stops on its own).
"""

from jaxlab.data.graph_configs import graph_config


def get_config(arg=None):
  del arg
  config = graph_config()
  config.model = dict(name='gcn', hidden=16, dropout=0.5, propagation='edges')  # or 'dense' (slower here)
  config.loss.update(dict(l2=5e-4, penalty_paths='layer_0/'))
  config.optimizer.update(dict(name='adam', learning_rate=0.01))
  config.train.update(dict(num_steps=200, early_stopping_metric='validation_loss', early_stopping_mode='min',
                           early_stopping_patience=10))
  return config
