"""A BERT-style masked language model on Tiny Shakespeare: the GPT's shape (4 x 4 heads x 128), bidirectional.

15 % of the characters are predicted (80 % shown as a mask token, 10 % random, 10 % unchanged);
dropout 0.1; the GPT's optimiser and 2000 steps.
"""

from jaxlab.data.text_configs import nanogpt_protocol, text_config


def get_config(arg=None):
  del arg
  config = text_config(task='masked_lm', block_size=64, batch_size=12)
  config.model = dict(name='bert', block_size=config.data.get_ref('block_size'), num_layers=4, num_heads=4, width=128,
                      dropout=0.1, use_bias=True, gelu_approximate=True,
                      dtype='float32', param_dtype='float32', remat='none')
  nanogpt_protocol(config, num_steps=2000)
  del config['sample']  # a masked LM does not generate text
  return config
