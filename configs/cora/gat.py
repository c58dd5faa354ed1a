"""GAT (Veličković et al. 2018) on the Planetoid split of Cora: the paper gives 83.0 ± 0.7 % test accuracy (100 runs).

8 heads x 8 hidden, ELU, one output head; dropout 0.6 on every layer's input and on the
attention coefficients; L2 5e-4 on all weights; Adam 0.005; early stopping with a patience of
100 epochs on the validation loss (the paper's code watches loss and accuracy together).
"""

from jaxlab.data.graph_configs import graph_config


def get_config(arg=None):
  del arg
  config = graph_config()
  config.model = dict(name='gat', heads=8, hidden=8, output_heads=1, dropout=0.6)
  config.loss.update(dict(l2=5e-4))
  config.optimizer.update(dict(name='adam', learning_rate=0.005))
  config.train.update(dict(num_steps=1500, early_stopping_metric='validation_loss', early_stopping_mode='min',
                           early_stopping_patience=100))
  return config
