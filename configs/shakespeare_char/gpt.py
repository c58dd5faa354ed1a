"""nanoGPT's Shakespeare-char CPU configuration (its README): 4 layers, 4 heads, width 128, block 64.

Batch 12, dropout 0, no biases, tied embeddings; AdamW 1e-3 with 100 warm-up steps and cosine
decay to 1e-4 over 2000 steps. nanoGPT reports validation loss 1.88 after 2000 iterations.
"""

from jaxlab.data.text_configs import nanogpt_protocol, text_config


def get_config(arg=None):
  del arg
  config = text_config(block_size=64, batch_size=12)
  config.model = dict(name='gpt', block_size=config.data.get_ref('block_size'), num_layers=4, num_heads=4, width=128,
                      dropout=0.0, use_bias=False, tie_embeddings=True, gelu_approximate=True,
                      dtype='float32', param_dtype='float32', remat='none')
  nanogpt_protocol(config, num_steps=2000)
  return config
