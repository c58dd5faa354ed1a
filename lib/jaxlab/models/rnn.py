"""Recurrent networks (GRU, LSTM or simple RNN cells): a sequence classifier and a language model."""

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
    return nn.Dense(self.num_classes, name='head')(y)


class RNNLM(nn.Module):
  """A character-RNN language model: embedding, `num_layers` recurrent layers, logits over the vocabulary.

  With decode=True it reads one token per call and carries each layer's state in the 'cache'
  collection (made as for the GPT: a call on (batch, length) zeros with mutable=['cache']).
  """

  vocab_size: int
  cell: str = 'lstm'
  hidden: int = 128
  num_layers: int = 2
  embedding: int = 0  # width of the token embedding; 0: the hidden size
  dropout: float = 0.0  # between layers, as char-rnn

  def validate(self) -> None:
    checks.one_of('cell', self.cell, CELLS)
    checks.positive(hidden=self.hidden, num_layers=self.num_layers)
    checks.rate(dropout=self.dropout)

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False, decode: bool = False) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.embedding or self.hidden, name='token_embedding')(tokens)
    for i in range(self.num_layers):
      layer = nn.RNN(CELLS[self.cell](self.hidden), name=f'layer_{i}')
      if decode:
        ready = self.has_variable('cache', f'carry_{i}')
        carry = self.variable('cache', f'carry_{i}', layer.cell.initialize_carry, jax.random.key(0), x[:, 0].shape)
        if ready:
          carry.value, x = layer(x, initial_carry=carry.value, return_carry=True)
        else:
          x = layer(x)
      else:
        x = layer(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.vocab_size, name='head')(x)
