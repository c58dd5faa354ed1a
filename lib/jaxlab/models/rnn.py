"""Recurrent classifiers over a sequence (GRU, LSTM or simple RNN cells)."""

import flax.linen as nn
import jax

from jaxlab.models import checks

CELLS = {'gru': nn.GRUCell, 'lstm': nn.OptimizedLSTMCell, 'simple': nn.SimpleCell}
READOUTS = ('flatten', 'last')


class RNNClassifier(nn.Module):
  """Reads a (batch, time) or (batch, time, features) sequence; classifies from all outputs.

  `readout='flatten'` feeds every time step's output to the classifier, 'last' only the final one.
  """

  num_classes: int
  cell: str = 'gru'
  hidden: int = 6
  bidirectional: bool = True
  readout: str = 'flatten'

  def validate(self) -> None:
    checks.one_of('cell', self.cell, CELLS)
    checks.one_of('readout', self.readout, READOUTS)
    checks.positive(hidden=self.hidden)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 2:
      x = x[..., None]
    cell = CELLS[self.cell]
    layer = nn.RNN(cell(self.hidden))
    if self.bidirectional:
      layer = nn.Bidirectional(layer, nn.RNN(cell(self.hidden)))
    y = layer(x)
    y = y.reshape(y.shape[0], -1) if self.readout == 'flatten' else y[:, -1]
    return nn.Dense(self.num_classes)(y)
