"""nanoGPT's Shakespeare-char GPU configuration (config/train_shakespeare_char.py): 6 x 6 heads x 384, block 256.

Batch 64, dropout 0.2, no biases, tied embeddings; AdamW 1e-3, 100 warm-up steps, cosine decay to
1e-4 over 5000 steps. nanoGPT reports validation loss 1.4697 after ~3 minutes on one A100.
"""

from jaxlab.data.text_configs import nanogpt_protocol, text_config


def get_config(arg=None):
  del arg
  config = text_config(block_size=256, batch_size=64)
  config.model = dict(name='gpt', block_size=config.data.get_ref('block_size'), num_layers=6, num_heads=6, width=384,
                      dropout=0.2, use_bias=False, tie_embeddings=True, gelu_approximate=True,
                      dtype='float32', param_dtype='float32', remat='none')
  nanogpt_protocol(config, num_steps=5000)
  return config
