"""A char-LSTM (2 layers of 128, char-rnn's shape) under the protocol of gpt.py: same data, batch, optimiser, steps.

`:gru` or `:simple` swaps the cell: `--config configs/shakespeare_char/lstm.py:gru`.
"""

from jaxlab.data.text_configs import nanogpt_protocol, text_config


def get_config(arg=None):
  config = text_config(block_size=64, batch_size=12)
  config.model = dict(name='rnn_lm', cell=arg or 'lstm', hidden=128, num_layers=2, embedding=0, dropout=0.0)
  nanogpt_protocol(config, num_steps=2000)
  return config
